"""Labelled examples for fine-tuning, from the source data.source names; the task module
(`lm.tasks.get`) reads them, so each task's formats and offline set live beside its model code:

* python_docs: ``task.offline_examples(split, data.eval_fraction)``, built at run time from text
  every Python install ships (lm/tasks/python_docs.py), deterministic, labels read off real
  structure.
* files: ``task.read_file(path)`` on each of data.files (UTF-8 local files; comma-separated paths
  or globs); held-out examples from data.eval_files, else split off by a hash (eval_fraction).
* tfds: ``task.tfds_examples(name, rows, info)`` on the rows of data.tfds_name, which must
  already be prepared in data.data_dir (no download is attempted).

Examples are plain dicts whose shape each task module documents. The offline splits are by a
sha256 hash of a key each task picks (`hash_split`), so they are stable across runs and
machines.
"""

from __future__ import annotations

import hashlib
import json
from typing import Optional

from lm import tasks
from lm.data import sources


def in_eval_split(key: str, fraction: float) -> bool:
  digest = hashlib.sha256(key.encode('utf-8', errors='replace')).digest()
  return int.from_bytes(digest[:8], 'big') / 2.0**64 < fraction


def hash_split(examples, key_fn, split: str, fraction: float):
  """The examples of `split` ('train', 'validation' or 'all') by a hash of key_fn(example)."""
  if split not in ('train', 'validation', 'all'):
    raise ValueError(f'split={split!r}: the offline sets have train, validation and all.')
  if split == 'all':
    return list(examples)
  want = split == 'validation'
  return [e for e in examples if in_eval_split(key_fn(e), fraction) == want]


def read_jsonl(path: str):
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f):
      if line.strip():
        try:
          yield json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f'{path}:{n + 1}: not JSON ({e}).') from e


def decode(x) -> str:
  """A TFDS string feature (bytes) or number as text."""
  return x.decode('utf-8') if isinstance(x, bytes) else str(x)


def load_tfds(name: str, split: str, data_dir: Optional[str], max_examples: int = 0):
  """(numpy rows, DatasetInfo) of a prepared TFDS dataset."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if not data_dir:
    raise ValueError(
      'data.source=tfds needs data.data_dir (a prepared TFDS directory): tfds '
      'would otherwise try the network.'
    )
  ds, info = tfds.load(name, split=split, data_dir=data_dir, with_info=True, download=False)
  if max_examples:
    ds = ds.take(max_examples)
  return tfds.as_numpy(ds), info


def _reader(task: str, fn: str, source: str):
  """The task module's reader `fn` for data.source=`source`, or a clear error."""
  m = tasks.get(task)
  if not hasattr(m, fn):
    raise ValueError(
      f'task={task!r} ({m.__name__}) has no {fn}(), so it cannot read '
      f'data.source={source!r}: pick another source or add {fn} to the module.'
    )
  return getattr(m, fn)


def load_examples(task: str, data_cfg, split: str):
  """(examples, label names or None) for `split` ('train' or the eval split)."""
  sources.check(data_cfg)
  source = data_cfg.source
  if source == 'python_docs':
    return _reader(task, 'offline_examples', source)(split, data_cfg.eval_fraction), None
  if source == 'files':
    if not data_cfg.files:
      raise ValueError(
        "data.source='files' needs --config.data.files=PATH[,PATH...] (formats: the "
        f'docstring of {tasks.get(task).__name__}).'
      )
    read, held_out = _reader(task, 'read_file', source), data_cfg.get('eval_files', '')
    key = 'eval_files' if held_out and split != 'train' else 'files'
    examples, names = [e for path in sources.expand(data_cfg[key], key) for e in read(path)], None
  else:
    if not data_cfg.tfds_name:
      raise ValueError("data.source='tfds' needs --config.data.tfds_name=NAME.")
    held_out = data_cfg.get('eval_split', '')
    rows, info = load_tfds(
      data_cfg.tfds_name,
      held_out if held_out and split != 'train' else data_cfg.split,
      data_cfg.data_dir,
      int(data_cfg.max_examples),
    )
    examples, names = _reader(task, 'tfds_examples', source)(data_cfg.tfds_name, rows, info)
  if held_out:
    return examples, names
  # No held-out files / split: split them off by a hash (a QA context with all its questions
  # lands on one side).
  return hash_split(
    examples,
    lambda e: e.get('context') or json.dumps(e, sort_keys=True),
    'train' if split == 'train' else 'validation',
    float(data_cfg.eval_fraction),
  ), names
