"""Text-to-text data: examples, templates, sources, and their rows for a decoder or a T5.

Data (``data.source``, the vocabulary of :mod:`lm.data.sources`), as examples of rendered pieces
(text, kind): context, cuttable context (a document, cut at its end when too long) or target:

* ``'files'``: JSON lines, either ``{"prompt": ..., "response": ...}`` (field names
  ``data.prompt_key`` / ``data.target_key``; a translation pair names its two languages) or a chat
  ``{"messages": [{"role", "content"}]}`` (roles ``system`` (first only), ``user``,
  ``assistant``; the last is an assistant turn).
* ``'tfds'``: ``data.tfds_name`` read from an already prepared ``data.data_dir``; the feature keys
  of ``cnn_dailymail`` (article -> highlights) and ``xsum`` (document -> summary) are known, any
  other dataset names them with ``data.prompt_key`` / ``data.target_key``.
* ``'python_docs'`` (offline default), from the sources the pretraining corpus leaves out
  (:mod:`lm.data.python_docs`; no 13-word sequence shared with the pretraining documents):
  ``task='summarize'``: a docstring's body -> its PEP 257 summary line; ``task='sft'``: a chat
  asking what a stdlib callable does -> the first paragraph of its docstring.

Templates (``data.template``):

* ``'chat'``: ``[bos]{system}\\n\\nUser: {user}\\nAssistant: {assistant}[eos]\\nUser: ...``; every
  assistant turn (and its eos) is a target, everything else context. A prompt/response pair is one
  user turn and one assistant turn.
* ``'plain'``: ``[bos]`` + ``data.prompt_format`` with ``{prompt}`` filled + `` {target}[eos]``
  (summarization: ``'{prompt}\\nTL;DR:'``); the document is cut at its end to fit.

Rows, by model:

* a decoder (a prefix LM): encoded examples packed into rows of ``data.seq_len`` tokens with
  segment ids (attention never crosses an example, positions restart) and a loss mask on the
  target tokens (:func:`featurize`);
* an encoder-decoder (T5): one example per row, the context (no bos, ending in eos) as the
  encoder's ``data.max_prompt_len`` tokens and the last target (ending in eos) as the decoder's
  ``data.seq_len - data.max_prompt_len``, so one data config serves either model with the same
  context budget (:func:`featurize_seq2seq`).
"""

from __future__ import annotations

import functools
import re
from typing import Optional

import numpy as np

from lm.data import python_docs
from lm.data import split as split_lib
from lm.data import sources

TASKS = ('sft', 'summarize', 'translate')
OFFLINE_TASKS = ('sft', 'summarize')  # with python_docs examples; translate has none
TEMPLATES = ('chat', 'plain')
SPLITS = ('train', 'validation', 'test')
CONTEXT, DOCUMENT, TARGET = 0, 1, 2  # piece kinds
TFDS_KEYS = {'cnn_dailymail': ('article', 'highlights'), 'xsum': ('document', 'summary')}
DEFAULT_KEYS = {
  'sft': ('prompt', 'response'),
  'summarize': ('document', 'summary'),
  'translate': ('source', 'target'),
}
ROLES = ('system', 'user', 'assistant')


# ------------------------------------------------------------------ examples and templates


def render(example: dict, data_cfg) -> list:
  """(text, kind) pieces of one example ({'prompt', 'target'} or {'messages'})."""
  if 'messages' in example:
    msgs = example['messages']
  elif data_cfg.template == 'chat':
    msgs = [{'role': 'user', 'content': example['prompt']}]
    msgs.append({'role': 'assistant', 'content': example['target']})
  else:
    if data_cfg.template != 'plain':
      raise ValueError(f'data.template={data_cfg.template!r}: use one of {TEMPLATES}.')
    head, sep, tail = data_cfg.prompt_format.partition('{prompt}')
    if not sep:
      raise ValueError(f'data.prompt_format={data_cfg.prompt_format!r} lacks {{prompt}}.')
    pieces = [(head, CONTEXT), (example['prompt'].strip(), DOCUMENT), (tail, CONTEXT)]
    return [p for p in pieces if p[0]] + [(' ' + example['target'].strip(), TARGET)]
  if data_cfg.system and msgs[0]['role'] != 'system':
    msgs = [{'role': 'system', 'content': data_cfg.system}] + list(msgs)
  pieces = []
  for i, m in enumerate(msgs):
    text = m['content'].strip()
    if m['role'] == 'system':
      pieces.append((text + '\n\n', CONTEXT))
    elif m['role'] == 'user':
      pieces.append(
        (('\n' if i and pieces[-1][1] == TARGET else '') + f'User: {text}\nAssistant:', CONTEXT)
      )
    else:
      pieces.append((' ' + text, TARGET))
  return pieces


def check_messages(messages, where: str):
  if not isinstance(messages, list) or not messages:
    raise ValueError(f'{where}: "messages" must be a non-empty list of {{"role", "content"}}.')
  for i, m in enumerate(messages):
    if (
      not isinstance(m, dict) or m.get('role') not in ROLES or not isinstance(m.get('content'), str)
    ):
      raise ValueError(f'{where}: message {i} needs a role in {ROLES} and a text "content".')
    if m['role'] == 'system' and i:
      raise ValueError(f'{where}: only the first message may be the system message.')
  if messages[-1]['role'] != 'assistant':
    raise ValueError(f'{where}: the last message must be an assistant turn (the target).')


def source_text(example: dict) -> str:
  """The input text of an example (the document, for the lead baseline)."""
  if 'messages' in example:
    return ' '.join(m['content'] for m in example['messages'][:-1] if m['role'] == 'user')
  return example['prompt']


def reference(example: dict) -> str:
  """The text a generation is scored against: the (last) target."""
  if 'messages' in example:
    return example['messages'][-1]['content'].strip()
  return example['target'].strip()


# ------------------------------------------------------------------ sources


def _keys(data_cfg, task: str) -> tuple:
  base = (data_cfg.tfds_name or '').split(':')[0].split('/')[0]
  default = TFDS_KEYS.get(base) if data_cfg.source == 'tfds' else None
  default = default or DEFAULT_KEYS[task]
  return (data_cfg.prompt_key or default[0], data_cfg.target_key or default[1])


def read_jsonl(files: str, keys: tuple) -> list[dict]:
  out = []
  for where, obj in sources.jsonl_objects(files):
    if 'messages' in obj:
      check_messages(obj['messages'], where)
      out.append({'messages': obj['messages']})
      continue
    if not all(isinstance(obj.get(k), str) for k in keys):
      raise ValueError(
        f'{where} has neither "messages" nor text fields {list(keys)} (has {sorted(obj)}): '
        'set --config.data.prompt_key / target_key.'
      )
    out.append({'prompt': obj[keys[0]], 'target': obj[keys[1]]})
  return out


def read_tfds(name: str, split: str, data_dir, keys: tuple, limit: int = 0) -> list[dict]:
  fields = {'prompt': keys[0], 'target': keys[1]}
  return sources.tfds_texts(
    name, split, data_dir, fields, '--config.data.prompt_key / target_key', limit
  )


def _summary_split(doc: str):
  """(summary line, body) of a PEP 257 docstring, or None: a one-line summary ending in a period,
  a blank line, then at least 15 words of description."""
  parts = re.split(r'\n\s*\n', doc.strip(), maxsplit=1)
  if len(parts) < 2:
    return None
  summary, body = parts[0].strip(), parts[1].strip()
  if '\n' in summary or not summary.endswith('.') or len(summary.split()) < 4:
    return None
  if len(body.split()) < 15 or body.lstrip().startswith(('>>>', ':')):
    return None
  return summary, body


def _qualname(module, obj) -> str:
  return f'{module.__name__}.{getattr(obj, "__qualname__", getattr(obj, "__name__", "?"))}'


def _paragraphs(text: str) -> set:
  return {' '.join(p.split()) for p in re.split(r'\n\s*\n', text) if len(p.split()) > 1}


@functools.lru_cache(maxsize=None)
def _pretraining_index() -> tuple:
  """(13-word sequences, paragraphs) of the pretraining documents."""

  docs = python_docs.pretraining_documents()
  return frozenset().union(*map(python_docs.ngrams, docs)), frozenset().union(
    *map(_paragraphs, docs)
  )


def _held_out(*texts) -> bool:
  """No 13-word sequence and no paragraph shared with the pretraining corpus (Python copies
  some docstrings between modules)."""

  grams, paras = _pretraining_index()
  return not any(python_docs.ngrams(t) & grams or _paragraphs(t) & paras for t in texts)


@functools.lru_cache(maxsize=None)
def _python_docs_examples(task: str) -> tuple:
  """Every offline example of `task`, in a fixed order, keyed for the split by its text."""
  import inspect  # pylint: disable=g-import-not-at-top

  out, seen = [], set()
  if task == 'summarize':
    docs = [
      d
      for _, m in python_docs.modules(downstream=True)
      for d in python_docs.module_docstrings(m, 1)
    ]
    docs += python_docs.source_docstrings(1, downstream=True)
    for doc in docs:
      got = _summary_split(doc)
      if got and got[1] not in seen and _held_out(*got):
        seen.add(got[1])
        out.append({'prompt': got[1], 'target': got[0]})
    return tuple(out)
  for _, module in python_docs.modules(downstream=True):
    objs = []
    for _, obj in python_docs.public_callables(module):
      objs.append(obj)
      if inspect.isclass(obj):
        objs.extend(o for o in python_docs._own_methods(obj) if not isinstance(o, property))  # pylint: disable=protected-access
    for obj in objs:
      doc = obj.__doc__ if isinstance(obj.__doc__, str) else ''
      first = ' '.join(re.split(r'\n\s*\n', inspect.cleandoc(doc).strip(), maxsplit=1)[0].split())
      words = len(first.split())
      if not 4 <= words <= 80 or first in seen or not _held_out(first):
        continue
      seen.add(first)
      kind = 'class' if inspect.isclass(obj) else 'function'
      question = f'What does the {kind} {_qualname(module, obj)} do?'
      out.append(
        {
          'messages': [
            {'role': 'user', 'content': question},
            {'role': 'assistant', 'content': first},
          ]
        }
      )
  return tuple(out)


def load_splits(task: str, data_cfg) -> dict:
  """{'train', 'validation', 'test'} -> examples; a held-out split comes from its own files / TFDS
  split when named, else from a hash of each example's input (data.eval_fraction,
  data.test_fraction). Raises on an empty train or test split."""
  sources.check(data_cfg)
  if task not in TASKS:
    raise ValueError(f'task={task!r}: use one of {TASKS}.')
  keys = _keys(data_cfg, task)
  fracs = (float(data_cfg.eval_fraction), float(data_cfg.test_fraction))
  if data_cfg.source == 'python_docs':
    if task not in OFFLINE_TASKS:
      raise ValueError(
        f'task={task!r} has no offline data: pass --config.data.source=files (JSONL pairs) '
        'or tfds, with data.prompt_key / target_key naming the two languages.'
      )
    named, read, examples = ('', ''), None, list(_python_docs_examples(task))
  elif data_cfg.source == 'files':
    if not data_cfg.files:
      raise ValueError("data.source='files' needs --config.data.files=PATH[,PATH...].")
    named, read = (data_cfg.eval_files, data_cfg.test_files), lambda f: read_jsonl(f, keys)
    examples = read(data_cfg.files)
  else:
    if not data_cfg.tfds_name:
      raise ValueError("data.source='tfds' needs --config.data.tfds_name=NAME.")
    named = (data_cfg.eval_split, data_cfg.test_split)

    def read(split, limit=0):
      return read_tfds(data_cfg.tfds_name, split, data_cfg.data_dir, keys, limit)

    examples = read(data_cfg.split, int(data_cfg.max_train_examples))
  fracs = tuple(0.0 if n else f for n, f in zip(named, fracs))
  out = {s: [] for s in SPLITS}
  for ex in examples:
    out[SPLITS[split_lib.split_index(source_text(ex), *fracs)]].append(ex)
  for split, name in zip(SPLITS[1:], named):
    if name:
      out[split] = read(name)
  if int(data_cfg.max_train_examples):
    out['train'] = out['train'][: int(data_cfg.max_train_examples)]
  if not out['train'] or not out['test']:
    raise ValueError(
      f'text-to-text data {data_cfg.source!r} gave '
      + ', '.join(f'{len(v)} {k}' for k, v in out.items())
      + ' examples: train and test must be non-empty (check the files, splits or fractions).'
    )
  return out


# ------------------------------------------------------------------ tokens and packing


def specials(tok) -> tuple:
  """(bos, eos, pad) ids; a WordPiece tokenizer's [CLS] / [SEP] stand in for bos / eos."""
  bos = tok.bos_id if tok.bos_id is not None else tok.cls_id
  eos = tok.eos_id if tok.eos_id is not None else tok.sep_id
  return bos, eos, tok.pad_id if tok.pad_id is not None else 0


def _tokens(pieces: list, tok) -> list:
  """(ids, kind) per piece, each target followed by eos."""
  eos = specials(tok)[1]
  return [(tok.encode(text) + ([eos] if kind == TARGET else []), kind) for text, kind in pieces]


def _fit(context: list, budget: int) -> tuple:
  """(ids, is_target) of the context pieces in at most `budget` tokens: a DOCUMENT piece is cut
  at its end first, then the oldest tokens go."""
  excess = sum(len(t) for t, _ in context) - budget
  ids, mask = [], []
  for t, kind in context:
    if excess > 0 and kind == DOCUMENT:
      cut = min(excess, len(t) - 1)
      t, excess = t[: len(t) - cut], excess - cut
    ids, mask = ids + t, mask + [int(kind == TARGET)] * len(t)
  excess = max(excess, 0)
  return ids[excess:], mask[excess:]


def encode(pieces: list, tok, seq_len: int, max_prompt_len: int, generation: bool = False):
  """(ids, is_target) of one example for a decoder: ``[bos]`` + pieces, each target followed by
  eos.

  The context before the last target keeps at most `max_prompt_len` tokens (bos included; see
  :func:`_fit`); the last target is cut to fit `seq_len` (the row holds ids[:-1]). With
  `generation`, only the context is returned (the prompt)."""
  *context, (last, _) = _tokens(pieces, tok)
  ids, mask = _fit(context, max_prompt_len - 1)
  ids, mask = [specials(tok)[0]] + ids, [0] + mask
  if generation:
    return ids, mask
  last = last[: seq_len + 1 - len(ids)]
  return ids + last, mask + [1] * len(last)


def encode_seq2seq(pieces: list, tok, inputs_len: int, targets_len: int) -> tuple:
  """(encoder ids, target ids) of one example for an encoder-decoder (T5's layout): the context
  before the last target (earlier turns included) in at most `inputs_len` tokens ending in eos,
  and the last target with its eos, cut to `targets_len`."""
  *context, (last, _) = _tokens(pieces, tok)
  return _fit(context, inputs_len - 1)[0] + [specials(tok)[1]], last[:targets_len]


def pack(encoded: list, seq_len: int, pad_id: int) -> dict:
  """Rows of seq_len holding whole examples in order (a new row when the next does not fit):
  input_ids, targets (next token), weights (1 on target tokens), positions (from 0 per example)
  and segment_ids (1, 2, ... per example, 0 padding), the CLM batch of lm.data.pretrain."""
  rows, row = [], []
  for ids, mask in encoded:
    if len(row) and sum(len(x[0]) - 1 for x in row) + len(ids) - 1 > seq_len:
      rows.append(row)
      row = []
    row.append((ids, mask))
  if row:
    rows.append(row)
  n = len(rows)
  out = {
    'input_ids': np.full((n, seq_len), pad_id, np.int32),
    'targets': np.zeros((n, seq_len), np.int32),
    'weights': np.zeros((n, seq_len), np.float32),
    'positions': np.zeros((n, seq_len), np.int32),
    'segment_ids': np.zeros((n, seq_len), np.int32),
  }
  for r, row in enumerate(rows):
    o = 0
    for s, (ids, mask) in enumerate(row, 1):
      k = len(ids) - 1
      out['input_ids'][r, o : o + k] = ids[:-1]
      out['targets'][r, o : o + k] = ids[1:]
      out['weights'][r, o : o + k] = mask[1:]
      out['positions'][r, o : o + k] = np.arange(k)
      out['segment_ids'][r, o : o + k] = s
      o += k
  return out


def featurize(examples: list, tok, data_cfg, seed: Optional[int] = None) -> dict:
  """Packed rows of `examples` (shuffled by `seed` first when given, for training)."""
  if seed is not None:
    examples = [examples[i] for i in np.random.default_rng(seed).permutation(len(examples))]
  enc = [
    encode(render(e, data_cfg), tok, data_cfg.seq_len, data_cfg.max_prompt_len) for e in examples
  ]
  return pack(enc, data_cfg.seq_len, specials(tok)[2])


def seq2seq_lengths(data_cfg) -> tuple:
  """(encoder, decoder) tokens per row: the decoder's context budget and the rest of its row."""
  return int(data_cfg.max_prompt_len), int(data_cfg.seq_len) - int(data_cfg.max_prompt_len)


def featurize_seq2seq(examples: list, tok, data_cfg, seed: Optional[int] = None) -> dict:
  """One row per example (shuffled by `seed` first when given): input_ids and attention_mask
  (the encoder's), decoder_input_ids (the targets shifted right behind T5's start id 0), targets
  and weights (1 on target tokens), padded with 0."""
  if seed is not None:
    examples = [examples[i] for i in np.random.default_rng(seed).permutation(len(examples))]
  n_in, n_out = seq2seq_lengths(data_cfg)
  n = len(examples)
  out = {k: np.zeros((n, n_in), np.int32) for k in ('input_ids', 'attention_mask')}
  out.update({k: np.zeros((n, n_out), np.int32) for k in ('decoder_input_ids', 'targets')})
  out['weights'] = np.zeros((n, n_out), np.float32)
  for r, e in enumerate(examples):
    x, y = encode_seq2seq(render(e, data_cfg), tok, n_in, n_out)
    out['input_ids'][r, : len(x)], out['attention_mask'][r, : len(x)] = x, 1
    out['targets'][r, : len(y)], out['weights'][r, : len(y)] = y, 1
    out['decoder_input_ids'][r, 1 : len(y)] = y[:-1]
  return out
