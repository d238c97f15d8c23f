"""Preference data for reward models and DPO: (prompt, chosen, rejected) text triples.

Three sources, chosen by ``data_cfg.source`` (the vocabulary of :mod:`lm.data.sources`):

* ``'python_docs'`` (the offline default): pairs built from the English text that ships
  with Python, from the sources the pretraining corpus leaves out
  (:func:`lm.data.python_docs.downstream_documents`), see :func:`python_docs_pairs`.
* ``'files'``: local JSON-lines files, one object per line::

      {"prompt": "The assert statement", "chosen": " is a way to ...", "rejected": " ..."}

  ``data_cfg.files`` (comma-separated paths/globs) are the training pairs; the field names
  are ``data_cfg.prompt_key`` / ``chosen_key`` / ``rejected_key``. Validation pairs come from
  ``data_cfg.eval_files`` and test pairs from ``data_cfg.test_files`` when set, else each is
  split off the training files by a deterministic hash of the prompts (``data_cfg.eval_fraction``,
  ``data_cfg.test_fraction``). The responses are appended to the prompt verbatim, so
  start them with the space (or newline) that separates them from the prompt.
* ``'tfds'``: the TFDS dataset ``data_cfg.tfds_name`` with those three (configurable) text
  features, read from an already prepared ``data_cfg.data_dir`` (``data_cfg.split``; validation
  and test pairs from ``data_cfg.eval_split`` / ``test_split``, or a hash split when empty).

Three splits, as everywhere: train (fitted), validation (logged while training) and test
(reported once at the end, never used to choose anything).

Every sequence is ``[bos] prompt response [eos]`` (bos = eos = ``<|endoftext|>`` for BPE,
as in pretraining where each document follows an eos), right-padded to ``seq_len``.
``*_resp`` marks the response tokens (eos included): only they count in the sequence
log-probabilities; the prompt is context only.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Optional

import numpy as np

from lm import distributed
from lm import progress
from lm.data import python_docs
from lm.data import sources
from lm.data import split as split_lib

FIELDS = ('prompt', 'chosen', 'rejected')
REJECTED_KINDS = ('shuffle', 'other', 'mix')

_SENTENCE_END = re.compile(r'(?<=[.!?])\s+(?=["\'(A-Z])')
_HEADING = re.compile(r'^\s*[*=\-~^"#]{3,}\s*$', re.M)


def _seed(text: str, salt: str) -> int:
  return int(split_lib.unit(text, salt) * 2**63)


# ------------------------------------------------------------------ offline default


def _prose_paragraphs(doc: str) -> list[str]:
  """Blank-line separated paragraphs that read as prose, each joined onto one line.

  Skipped: headings, code (``>>>``, indented blocks that are not the whole paragraph's
  body), tables and argument lists -- anything without ordinary sentences.
  """
  out = []
  for para in re.split(r'\n\s*\n', doc):
    lines = [l for l in para.splitlines() if l.strip()]
    if (
      not lines
      or _HEADING.search(para)
      or any(l.lstrip().startswith(('>>>', '...', '|', '+--')) for l in lines)
    ):
      continue
    indents = {len(l) - len(l.lstrip()) for l in lines}
    if len(indents) > 1:  # hanging indents: argument lists, code, tables
      continue
    text = ' '.join(l.strip() for l in lines)
    letters = sum(c.isalpha() or c == ' ' for c in text)
    if letters < 0.85 * len(text) or ':' in text[-2:]:
      continue
    out.append(text)
  return out


def _split_paragraph(text: str, max_prompt_words: int, max_response_words: int):
  """(first sentence, the sentences after it up to max_response_words) or None."""
  sentences = [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]
  if len(sentences) < 2:
    return None
  prompt = sentences[0]
  if not 4 <= len(prompt.split()) <= max_prompt_words:
    return None
  response, words = [], 0
  for s in sentences[1:]:
    n = len(s.split())
    if response and words + n > max_response_words:
      break
    if not response and n > max_response_words:
      return None
    response.append(s)
    words += n
  if words < 6:
    return None
  return prompt, ' '.join(response)


def _shuffled(text: str, rng: np.random.Generator) -> Optional[str]:
  words = text.split()
  for _ in range(10):
    perm = rng.permutation(len(words))
    if (perm != np.arange(len(words))).mean() > 0.5:
      return ' '.join(words[i] for i in perm)
  return None


def python_docs_pairs(
  seed: int = 0,
  eval_fraction: float = 0.1,
  rejected: str = 'shuffle',
  max_prompt_words: int = 40,
  max_response_words: int = 40,
  docs: Optional[list[str]] = None,
  test_fraction: float = 0.1,
):
  """Preference pairs from Python's bundled documentation: (train, validation, test) lists of
  dicts.

  Each prose paragraph of the downstream sources (the pydoc topics and the reserved modules'
  docstrings, :func:`lm.data.python_docs.downstream_documents`: no pretraining text) gives one
  pair:
  prompt = its first sentence, chosen = the sentences that really follow it (whole
  sentences, up to ``max_response_words`` words), rejected =

  * ``'shuffle'``: the same continuation with its words in a random order (same words,
    same length: only order and fluency tell them apart);
  * ``'other'``: the continuation of a paragraph from a different document of the same
    split (fluent, but off-topic for the prompt);
  * ``'mix'``: each pair picks one of the two by a hash of its prompt.

  Whole documents are held out (a sha256 hash of the document's text against
  ``eval_fraction`` for validation, the next ``test_fraction`` for test), and a prompt or
  continuation that recurs (the pydoc topics repeat some passages) is used only at its first
  occurrence, so no held-out prompt or continuation appears in training or the other held-out
  split. Every
  choice is seeded by ``seed`` and the texts: the same call returns the same pairs on every
  machine with the same Python version.
  """
  if rejected not in REJECTED_KINDS:
    raise ValueError(f'rejected={rejected!r}: use one of {REJECTED_KINDS}.')
  if docs is None:
    docs = python_docs.downstream_documents()
  splits = ([], [], [])  # (train, validation, test): lists of (doc index, prompt, chosen)
  seen = set()  # pydoc topics repeat passages: a prompt or continuation is used once, first
  for d, doc in enumerate(docs):
    which = split_lib.split_index(doc, eval_fraction, test_fraction)
    for para in _prose_paragraphs(doc):
      got = _split_paragraph(para, max_prompt_words, max_response_words)
      if got and not seen & set(got):
        seen.update(got)
        splits[which].append((d,) + got)
  out = []
  for s, items in enumerate(splits):
    pairs = []
    for k, (d, prompt, chosen) in enumerate(items):
      rng = np.random.default_rng([seed, _seed(prompt + chosen, 'pair:')])
      kind = rejected
      if kind == 'mix':
        kind = 'shuffle' if rng.random() < 0.5 else 'other'
      if kind == 'shuffle':
        bad = _shuffled(chosen, rng)
      else:  # a continuation from another document of the same split
        others = [j for j in rng.permutation(len(items))[:8] if items[j][0] != d]
        bad = items[others[0]][2] if others else None
      if bad is None or bad == chosen:
        continue
      pairs.append({'prompt': prompt, 'chosen': ' ' + chosen, 'rejected': ' ' + bad})
    out.append(pairs)
  return tuple(out)


# ------------------------------------------------------------------ files and TFDS


def read_jsonl(files: str, keys=FIELDS) -> list[dict]:
  """Pairs from JSON-lines files; ``keys`` name the prompt, chosen and rejected fields."""
  pairs = []
  for where, obj in sources.jsonl_objects(files):
    missing = [k for k in keys if not isinstance(obj.get(k), str)]
    if missing:
      raise ValueError(
        f'{where} lacks text field(s) {missing} (has {sorted(obj)}): '
        'set --config.data.prompt_key/chosen_key/rejected_key.'
      )
    pairs.append({f: obj[k] for f, k in zip(FIELDS, keys)})
  if not pairs:
    raise ValueError(f'no preference pairs in {files!r}.')
  return pairs


def write_jsonl(pairs: list[dict], path: str):
  with open(path, 'w', encoding='utf-8') as f:
    for p in pairs:
      f.write(json.dumps({k: p[k] for k in FIELDS}) + '\n')


def read_tfds(name: str, split: str, data_dir, keys=FIELDS) -> list[dict]:
  return sources.tfds_texts(
    name, split, data_dir, dict(zip(FIELDS, keys)),
    '--config.data.prompt_key/chosen_key/rejected_key',
  )  # fmt: skip


SPLITS = split_lib.SPLITS


def load_splits(data_cfg) -> dict:
  """{'train', 'validation', 'test'} -> lists of {'prompt', 'chosen', 'rejected'} dicts."""

  def get(k, default):
    v = getattr(data_cfg, k, None)
    return default if v is None or v == '' else v

  sources.check(data_cfg)
  source = get('source', 'python_docs')
  fracs = (float(get('eval_fraction', 0.1)), float(get('test_fraction', 0.1)))
  cap = int(get('max_pairs', 0))
  keys = tuple(get(f'{f}_key', f) for f in FIELDS)
  if source == 'python_docs':
    got = python_docs_pairs(
      int(get('seed', 0)),
      fracs[0],
      get('rejected', 'shuffle'),
      int(get('max_prompt_words', 40)),
      int(get('max_response_words', 40)),
      test_fraction=fracs[1],
    )
  else:
    if source == 'files':
      if not get('files', ''):
        raise ValueError("data.source='files' needs --config.data.files=PATH[,PATH...].")
      named = (get('eval_files', ''), get('test_files', ''))
      read = lambda what: read_jsonl(what, keys)
      pairs = read(get('files', ''))
    else:
      name, data_dir = get('tfds_name', ''), get('data_dir', None)
      if not name:
        raise ValueError("data.source='tfds' needs --config.data.tfds_name=NAME.")
      named = (get('eval_split', ''), get('test_split', ''))
      read = lambda what: read_tfds(name, what, data_dir, keys)
      pairs = read(get('split', 'train'))
    # Each held-out split from its own files / TFDS split when named, else hashed off training.
    fracs = tuple(0.0 if n else f for n, f in zip(named, fracs))
    got = [[], [], []]
    for p in pairs:
      got[split_lib.split_index(p['prompt'], *fracs)].append(p)
    for i, n in enumerate(named, 1):
      if n:
        got[i] = read(n)
  out = dict(zip(SPLITS, got))
  if cap:  # training pairs only: the held-out figures always cover every held-out pair
    out['train'] = out['train'][:cap]
  needed = ('train', 'test') + (('validation',) if sources.has_held_out(data_cfg) else ())
  if not all(out[k] for k in needed):
    raise ValueError(
      f'preference data {source!r} gave '
      + ', '.join(f'{len(v)} {k}' for k, v in out.items())
      + ' pairs: each must be non-empty (check eval_fraction / test_fraction / eval and test '
      'files or splits).'
    )
  return out


def load_pairs(data_cfg):
  """(train, validation) pairs: what a training run fits and logs (notebooks); the test pairs
  are in :func:`load_splits`."""
  out = load_splits(data_cfg)
  return out['train'], out['validation']


# ------------------------------------------------------------------ tokenization


def encode_pairs(pairs: list[dict], tok, seq_len: int, max_prompt_len: int) -> dict:
  """Token arrays for chosen and rejected sequences, [N, seq_len] each.

  ``{c}_ids`` (int32, pad_id after the end), ``{c}_mask`` (1 = real token) and ``{c}_resp``
  (1 = response token, eos included) for c in (chosen, rejected). The prompt keeps its last
  ``max_prompt_len`` tokens (bos first), the response is cut to what fits.
  """
  if max_prompt_len >= seq_len:
    raise ValueError(
      f'max_prompt_len={max_prompt_len} leaves no room for a response in seq_len={seq_len}.'
    )
  eos = tok.eos_id if tok.eos_id is not None else tok.sep_id
  bos = tok.bos_id if tok.bos_id is not None else tok.cls_id
  pad = tok.pad_id if tok.pad_id is not None else 0
  n = len(pairs)
  out = {}
  prompts = tok.encode_batch([p['prompt'] for p in pairs])
  for c in ('chosen', 'rejected'):
    ids = np.full((n, seq_len), pad, np.int32)
    mask = np.zeros((n, seq_len), np.int32)
    resp = np.zeros((n, seq_len), np.int32)
    for i, r in enumerate(tok.encode_batch([p[c] for p in pairs])):
      head = ([bos] if bos is not None else []) + prompts[i]
      head = head[-max_prompt_len:]
      body = (r + ([eos] if eos is not None else []))[: seq_len - len(head)]
      row = head + body
      ids[i, : len(row)] = row
      mask[i, : len(row)] = 1
      resp[i, len(head) : len(row)] = 1
    out.update({f'{c}_ids': ids, f'{c}_mask': mask, f'{c}_resp': resp})
  return out


def fingerprint(arrays: dict, *extra: str) -> str:
  """sha256 (16 hex digits) of the token arrays and any extra strings (the reference model)."""
  h = hashlib.sha256()
  for k in sorted(arrays):
    a = np.ascontiguousarray(arrays[k])
    h.update(f'{k}{a.dtype}{a.shape}'.encode())
    h.update(a.tobytes())
  for e in extra:
    h.update(str(e).encode())
  return h.hexdigest()[:16]


def num_rows(arrays: dict) -> int:
  """Rows of a dict of equal-length arrays (pairs, or lm.ppo's prompts)."""
  return len(next(iter(arrays.values())))


def train_batch(
  arrays: dict,
  step: int,
  batch_size: int,
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
) -> dict:
  """Rows of step `step`: epochs of a seeded permutation, so step -> batch is a pure function
  (resuming at step s gives exactly the batches a run without interruption would see).
  Each process takes its contiguous slice of the global batch."""
  n = num_rows(arrays)
  idx = []
  pos = step * batch_size
  while len(idx) < batch_size:
    epoch, off = divmod(pos, n)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    take = perm[off : off + batch_size - len(idx)]
    idx.extend(take.tolist())
    pos += len(take)
  per = batch_size // process_count
  idx = np.asarray(idx[process_index * per : (process_index + 1) * per])
  distributed.log_rows('preference_train', step, idx)
  batch = {k: v[idx] for k, v in arrays.items()}
  batch['weight'] = np.ones(len(idx), np.float32)
  return batch


def eval_batches(
  arrays: dict,
  batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
  desc: str = 'eval',
):
  """Every row once in order; the last batch is padded with weight-0 copies of row 0.
  `desc` names the phase on the progress bar (lm.progress)."""
  n = num_rows(arrays)
  per = batch_size // process_count
  for start in progress.track(range(0, n, batch_size), desc):
    idx = np.arange(start, start + batch_size)
    weight = (idx < n).astype(np.float32)
    mine = slice(process_index * per, (process_index + 1) * per)
    distributed.log_rows('preference_eval', start // batch_size, idx[mine][idx[mine] < n])
    idx = np.where(idx < n, idx, 0)[mine]
    batch = {k: v[idx] for k, v in arrays.items()}
    batch['weight'] = weight[process_index * per : (process_index + 1) * per]
    yield batch
