"""Text-to-text fine-tuning of a decoder: SFT (prompt -> response, chat) and summarization.

Both are one job, a prefix LM: the decoder reads a context and learns its target, with the loss on
the target tokens only. They differ in their data and in what eval.py reports (response loss and
ROUGE/BLEU of generations for both; the lead-sentence baseline for summarization).

Data (``data.source``, the vocabulary of :mod:`lm.data.sources`), as examples of rendered pieces
(text, kind): context, cuttable context (a document, cut at its end when too long) or target:

* ``'files'``: JSON lines, either ``{"prompt": ..., "response": ...}`` (field names
  ``data.prompt_key`` / ``data.target_key``) or a chat ``{"messages": [{"role", "content"}]}``
  (roles ``system`` (first only), ``user``, ``assistant``; the last is an assistant turn).
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

Encoded examples are packed into rows of ``data.seq_len`` tokens with segment ids (attention
never crosses an example, positions restart) and a loss mask on the target tokens; the loss is
the causal LM's (:func:`lm.objectives.loss_sums`) through ``trainer.make_train_step`` on the shared
loop. Validation response loss picks ``best/``; eval.py reports the test split.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from typing import Optional

import jax
import ml_collections
import numpy as np

from lm import checkpoint
from lm import cli
from lm import generate as gen
from lm import loop
from lm import metrics as metrics_lib
from lm import model as M
from lm import objectives
from lm import optim
from lm import preference
from lm import pretrained
from lm import report
from lm import sharding
from lm import trainer
from lm.data import sources
from lm.data import tokenizer as tokenizer_lib

TASKS = ('sft', 'summarize')
TEMPLATES = ('chat', 'plain')
SPLITS = ('train', 'validation', 'test')
CONTEXT, DOCUMENT, TARGET = 0, 1, 2  # piece kinds
TFDS_KEYS = {'cnn_dailymail': ('article', 'highlights'), 'xsum': ('document', 'summary')}
DEFAULT_KEYS = {'sft': ('prompt', 'response'), 'summarize': ('document', 'summary')}
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
  for path in sources.expand(files):
    with open(path, encoding='utf-8') as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          obj = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f'{path}:{n} is not JSON ({e}).') from None
        if 'messages' in obj:
          check_messages(obj['messages'], f'{path}:{n}')
          out.append({'messages': obj['messages']})
          continue
        if not all(isinstance(obj.get(k), str) for k in keys):
          raise ValueError(
            f'{path}:{n} has neither "messages" nor text fields {list(keys)} (has {sorted(obj)}): '
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
  from lm.data import python_docs  # pylint: disable=g-import-not-at-top

  docs = python_docs.pretraining_documents()
  return frozenset().union(*map(python_docs.ngrams, docs)), frozenset().union(
    *map(_paragraphs, docs)
  )


def _held_out(*texts) -> bool:
  """No 13-word sequence and no paragraph shared with the pretraining corpus (Python copies
  some docstrings between modules)."""
  from lm.data import python_docs  # pylint: disable=g-import-not-at-top

  grams, paras = _pretraining_index()
  return not any(python_docs.ngrams(t) & grams or _paragraphs(t) & paras for t in texts)


@functools.lru_cache(maxsize=None)
def _python_docs_examples(task: str) -> tuple:
  """Every offline example of `task`, in a fixed order, keyed for the split by its text."""
  import inspect  # pylint: disable=g-import-not-at-top

  from lm.data import python_docs  # pylint: disable=g-import-not-at-top

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
    out[SPLITS[preference.split_of(source_text(ex), *fracs)]].append(ex)
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


def _specials(tok):
  bos = tok.bos_id if tok.bos_id is not None else tok.cls_id
  eos = tok.eos_id if tok.eos_id is not None else tok.sep_id
  return bos, eos, tok.pad_id if tok.pad_id is not None else 0


def encode(pieces: list, tok, seq_len: int, max_prompt_len: int, generation: bool = False):
  """(ids, is_target) of one example: ``[bos]`` + pieces, each target followed by eos.

  The context before the last target keeps at most `max_prompt_len` tokens (a DOCUMENT piece is
  cut at its end first, then the oldest context goes); the last target is cut to fit `seq_len`
  (the row holds ids[:-1]). With `generation`, only the context is returned (the prompt)."""
  bos, eos, _ = _specials(tok)
  toks = [(tok.encode(text) + ([eos] if kind == TARGET else []), kind) for text, kind in pieces]
  *context, (last, _) = toks
  excess = sum(len(t) for t, _ in context) + 1 - max_prompt_len
  for i, (t, kind) in enumerate(context):
    if excess > 0 and kind == DOCUMENT:
      cut = min(excess, len(t) - 1)
      context[i], excess = (t[: len(t) - cut], kind), excess - cut
  ids, mask = [bos], [0]
  for t, kind in context:
    ids, mask = ids + t, mask + [int(kind == TARGET)] * len(t)
  if excess > 0:
    ids, mask = [bos] + ids[1 + excess :], [0] + mask[1 + excess :]
  if generation:
    return ids, mask
  last = last[: seq_len + 1 - len(ids)]
  return ids + last, mask + [1] * len(last)


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
  return pack(enc, data_cfg.seq_len, _specials(tok)[2])


# ------------------------------------------------------------------ steps


def _sums(model, params, batch, rng, deterministic, loss_chunk):
  return objectives.loss_sums('clm', model, params, batch, rng, deterministic, loss_chunk)


def make_train_step(config, model, tx, state_sh, mesh):
  """The causal LM's loss on the target tokens only (the batch's weights), normalised over the
  whole batch's target tokens, on the shared step."""

  def loss_fn(params, batch, rng, norms):
    sums = _sums(model, params, batch, rng, False, config.train.loss_chunk)
    return objectives.total_loss(sums, norms), sums

  return trainer.make_train_step(
    loss_fn,
    tx,
    state_sh,
    mesh,
    config,
    norms_fn=functools.partial(objectives.normalizers, 'clm'),
    metrics_fn=objectives.metrics,
  )


def make_eval_step(model, params_sh, mesh, loss_chunk: int = 0):
  """(params, batch) -> sums and normalisers over the target tokens of real rows (weight 1)."""

  def eval_fn(params, batch):
    batch = dict(batch, weights=batch['weights'] * batch['weight'][:, None])
    return _sums(model, params, batch, None, True, loss_chunk), objectives.normalizers('clm', batch)

  return trainer.jit_eval(eval_fn, params_sh, mesh)


def response_loss(eval_step, params, rows: dict, batch_size: int, mesh, stop=None) -> dict:
  """Mean NLL (loss), accuracy and perplexity of the target tokens of every packed row."""
  pi, pc = jax.process_index(), jax.process_count()
  batches = preference.eval_batches(rows, batch_size, pi, pc)
  return objectives.evaluate(
    eval_step, params, (sharding.shard_batch(b, mesh) for b in batches), stop
  )


def generate_texts(model, params, tok, examples: list, config) -> list[str]:
  """Greedy / beam / sampled continuations (config.generate) of each example's context."""
  g, d = config.generate, config.data
  _, eos, pad = _specials(tok)
  prompts = [
    encode(render(e, d), tok, d.seq_len, d.max_prompt_len, generation=True)[0] for e in examples
  ]
  size, out = int(config.eval_batch_size), []
  for s in range(0, len(prompts), size):
    chunk = prompts[s : s + size]
    got = gen.generate(
      model,
      params,
      chunk + [[eos]] * (size - len(chunk)),  # one compiled shape for every batch
      max_new_tokens=int(g.max_new_tokens),
      strategy=g.strategy,
      temperature=g.temperature,
      top_k=g.top_k,
      top_p=g.top_p,
      num_beams=g.num_beams,
      length_penalty=g.length_penalty,
      repetition_penalty=g.get('repetition_penalty', 1.0),
      no_repeat_ngram_size=int(g.get('no_repeat_ngram_size', 0)),
      min_new_tokens=int(g.get('min_new_tokens', 0)),
      eos_id=eos,
      pad_id=pad,
      seed=g.seed,
      prompt_len=int(d.max_prompt_len),
    )
    out += [tok.decode(seqs[0]).strip() for seqs in got[: len(chunk)]]
  return out


# ------------------------------------------------------------------ the run


def _check(config, cfg):
  d, g = config.data, config.generate
  if d.max_prompt_len >= d.seq_len:
    raise ValueError(
      f'data.max_prompt_len={d.max_prompt_len} leaves no target in seq_len={d.seq_len}.'
    )
  if (
    cfg.position == 'learned' and max(d.seq_len, d.max_prompt_len + g.max_new_tokens) > cfg.max_len
  ):
    raise ValueError(
      f'data.seq_len={d.seq_len} or data.max_prompt_len + generate.max_new_tokens='
      f'{d.max_prompt_len + g.max_new_tokens} exceeds the model max_len={cfg.max_len}.'
    )


def _load_init(config, mesh) -> pretrained.Pretrained:
  """The decoder and tokenizer of config.init_checkpoint, the start of a fresh run."""
  if not config.init_checkpoint:
    raise ValueError(
      'pass --config.init_checkpoint=DIR (a train.py workdir or an HF GPT-2 directory).'
    )
  pre = pretrained.load(config.init_checkpoint, mesh)
  if pre.kind != 'decoder' or pre.tokenizer is None:
    raise ValueError(
      f'{config.init_checkpoint} is an {pre.kind} (tokenizer: {pre.tokenizer}): text-to-text '
      'fine-tuning needs a decoder and its tokenizer.'
    )
  return pre


def _own_model(workdir: str):
  """(model config, tokenizer) of the run WORKDIR already checkpointed, or None (a fresh run)."""
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(ckpt_dir):
    return None
  ckpt = checkpoint.Checkpointer(ckpt_dir, read_only=True)
  if not ckpt.latest_step():
    return None
  meta, _ = ckpt.read_meta()
  tok = tokenizer_lib.Tokenizer.load(os.path.join(workdir, 'tokenizer.json'))
  return M.ModelConfig.from_dict(meta['model']), tok


def run(config, workdir: str) -> dict:
  """Fine-tunes config.init_checkpoint on the text-to-text data; returns the last validation
  metrics (history in WORKDIR/metrics.jsonl; the test split is eval.py's)."""
  workdir = cli.writable_dir(workdir)
  if config.task not in TASKS:
    raise ValueError(f'task={config.task!r}: use one of {TASKS}.')
  pi, pc = jax.process_index(), jax.process_count()
  mesh = sharding.make_mesh(config.mesh_shape)
  data = load_splits(config.task, config.data)  # before the model: bad data fails fast
  own = _own_model(workdir)
  if own is None:
    pre = _load_init(config, mesh)
    base_cfg, tok, init_params = pre.cfg, pre.tokenizer, pre.params
    del pre
  else:  # resume: the run's own model and tokenizer; init_checkpoint is not read (may be gone)
    (base_cfg, tok), init_params = own, None
  cfg = dataclasses.replace(base_cfg, **config.model_overrides.to_dict())
  _check(config, cfg)
  model = M.Decoder(cfg)
  if pi == 0 and own is None:
    tok.save(workdir)
  train_rows = featurize(data['train'], tok, config.data, seed=config.seed)
  eval_rows = featurize(data['validation'], tok, config.data) if data['validation'] else None
  if eval_rows is None:
    print(sources.NO_EVAL)
  tx = optim.make(config.train)
  inputs = (np.zeros((1, config.data.seq_len), np.int32),)
  if init_params is None:  # loop.fit restores the checkpoint into it
    state, state_sh = trainer.create_state(model, tx, mesh, config.seed, inputs)
  else:
    state, state_sh = trainer.create_state_from(model, tx, mesh, config.seed, inputs, init_params)
  del init_params
  print(
    f'{config.task}: {trainer.param_count(state.params):,} params from '
    + (config.init_checkpoint if own is None else f'{workdir} (resuming)')
    + ', '
    + ', '.join(f'{len(v)} {k}' for k, v in data.items())
    + f' examples, {len(train_rows["input_ids"])} packed training rows of {config.data.seq_len}'
  )
  train_step = make_train_step(config, model, tx, state_sh, mesh)
  eval_step = make_eval_step(model, state_sh.params, mesh, config.train.loss_chunk)
  stop = loop.StopFlag().install()
  evaluate = None
  if eval_rows is not None:

    def evaluate(params):
      return response_loss(eval_step, params, eval_rows, config.eval_batch_size, mesh, stop)

  writer = report.Writer(workdir, int(config.train.steps))
  fit = loop.fit(
    state,
    train_step,
    lambda step: sharding.shard_batch(
      preference.train_batch(train_rows, step, config.train.batch_size, config.seed, pi, pc), mesh
    ),
    config,
    workdir,
    writer=writer,
    stop=stop,
    evaluate=evaluate,
    eval_at_start=True,  # the initial model's validation response loss: the baseline
    meta=checkpoint.job_meta(config, cfg, config.task),
    rate=('rows_per_sec', config.train.batch_size),
  )
  writer.close()
  return fit.eval


# ------------------------------------------------------------------ loading and evaluating


def is_workdir(path: str) -> bool:
  """An sft.py workdir: its checkpoints' metadata names a text-to-text task."""
  return checkpoint.saved_task(path) in TASKS


def load(workdir: str, mesh=None, which: str = 'best') -> pretrained.Pretrained:
  """The fine-tuned decoder of an sft.py workdir: best/ (lowest validation response loss) when
  it exists and `which` is 'best', else the latest checkpoint."""
  mesh = mesh or sharding.make_mesh((-1, 1, 1))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), read_only=True)
  meta, step = ckpt.read_meta()
  config = ml_collections.ConfigDict(json.loads(meta['config']))
  cfg = M.ModelConfig.from_dict(meta['model'])
  inputs = (np.zeros((1, config.data.seq_len), np.int32),)
  target = trainer.abstract_state(M.Decoder(cfg), optim.make(config.train), mesh, inputs)
  best = checkpoint.Checkpointer(os.path.join(workdir, 'best'), read_only=True)
  if which == 'best' and os.path.isdir(os.path.join(workdir, 'best')) and best.latest_step():
    params, _, step = best.restore(target.params)
  else:
    state, _, step = ckpt.restore(target)
    params = state.params
  tok = tokenizer_lib.Tokenizer.load(os.path.join(workdir, 'tokenizer.json'))
  return pretrained.Pretrained('decoder', cfg, params, tok, config, step)


def evaluate_workdir(
  workdir: str, config=None, split: str = 'test', max_examples: int = 0, which: str = 'best'
):
  """(results, predictions) of an sft.py workdir on `split` of `config`'s data (default its own):
  the response loss of the fine-tuned and of the initial model, ROUGE-1/2/L and BLEU of the
  generations (config.generate) and, for summarization, of the lead-sentence baseline."""
  if split not in ('test', 'validation'):
    raise ValueError(f"split={split!r}: evaluate 'test' or 'validation'.")
  mesh = sharding.make_mesh((-1, 1, 1))
  got = load(workdir, mesh, which)
  config = config or got.config
  examples = load_splits(config.task, config.data)[split]
  if not examples:
    raise ValueError(f'no {split} examples in the data of {workdir}: pass --split=test.')
  if max_examples:
    examples = examples[:max_examples]
  rows = featurize(examples, got.tokenizer, config.data)
  params_sh = jax.tree.map(lambda x: x.sharding, got.params)
  eval_step = make_eval_step(got.model, params_sh, mesh)
  size = int(config.eval_batch_size)
  results = {'task': config.task, 'split': split, 'examples': len(examples), 'step': got.step}
  results.update(response_loss(eval_step, got.params, rows, size, mesh))
  if os.path.exists(config.init_checkpoint):  # the starting point, scored the same way
    init = pretrained.load(config.init_checkpoint, mesh)
    init_params = jax.device_put(init.params, params_sh)
    results['init_loss'] = response_loss(eval_step, init_params, rows, size, mesh)['loss']
  preds = generate_texts(got.model, got.params, got.tokenizer, examples, config)
  refs = [reference(e) for e in examples]
  results.update(metrics_lib.text_metrics(preds, refs))
  if config.task == 'summarize':
    results['lead'] = metrics_lib.text_metrics(
      [metrics_lib.lead_sentence(source_text(e)) for e in examples], refs
    )
  records = [
    {'input': source_text(e), 'reference': r, 'prediction': p}
    for e, r, p in zip(examples, refs, preds)
  ]
  return results, records
