"""Labelled examples for fine-tuning, from the source data.source names, in three splits: 'train'
(fitted), 'validation' (checkpoint selection and early stopping) and 'test' (what eval.py reports
by default, never used to choose anything). The task module (`lm.tasks.get`) reads them, so each
task's formats and offline set live beside its model code:

* python_docs: ``task.offline_examples(split, data.eval_fraction, data.test_fraction)``, built at
  run time from text every Python install ships (lm/tasks/python_docs.py), deterministic, labels
  read off real structure, and from sources the pretraining corpus leaves out
  (lm/data/python_docs.py).
* files: ``task.read_file(path)`` on each of data.files (UTF-8 local files; comma-separated paths
  or globs); validation examples from data.eval_files and test examples from data.test_files,
  each split off data.files by a hash (eval_fraction, test_fraction) when not named.
* tfds: ``task.tfds_examples(name, rows, info)`` on the rows of data.tfds_name, which must
  already be prepared in data.data_dir (no download is attempted); data.split for training,
  data.eval_split and data.test_split for the others, each hashed off data.split when empty.

Examples are plain dicts whose shape each task module documents. The hash splits are by a
sha256 of a key each task picks (`hash_split`), so they are stable across runs and machines.
"""

from __future__ import annotations

import inspect
import json
from typing import Optional

from lm import tasks
from lm.data import sources
from lm.data import split as split_lib


SPLITS = split_lib.SPLITS


def hash_split(examples, key_fn, split: str, eval_fraction: float, test_fraction: float = 0.0):
  """The examples of `split` ('train', 'validation', 'test' or 'all') by a hash of
  key_fn(example) (`lm.data.split_lib.split_name`)."""
  if split not in SPLITS + ('all',):
    raise ValueError(f'split={split!r}: the offline sets have {", ".join(SPLITS)} and all.')
  if split == 'all':
    return list(examples)
  return [
    e for e in examples if split_lib.split_name(key_fn(e), eval_fraction, test_fraction) == split
  ]


def fractions(data_cfg) -> tuple[float, float]:
  """(eval_fraction, test_fraction) of a data config; a config saved before test splits
  existed (no test_fraction) trained on every non-validation example, so it has no test set."""
  return float(data_cfg.eval_fraction), float(data_cfg.get('test_fraction', 0.0))


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


def _offline(task: str, data_cfg, split: str):
  read = _reader(task, 'offline_examples', 'python_docs')
  if 'test_fraction' not in inspect.signature(read).parameters:
    raise ValueError(
      f'task={task!r}: offline_examples(split, eval_fraction) has no test_fraction argument: '
      'add one and pass it to lm.tasks.data.hash_split (see lm/tasks/__init__.py).'
    )
  eval_fraction, test_fraction = fractions(data_cfg)
  return read(split, eval_fraction, test_fraction)


def load_examples(task: str, data_cfg, split: str):
  """(examples, label names or None) of `split`: 'train', 'validation' or 'test'."""
  if split not in SPLITS:
    raise ValueError(f'split={split!r}: use one of {SPLITS}.')
  sources.check(data_cfg)
  source = data_cfg.source
  # Where each held-out split comes from: its own files / TFDS split when named, else a hash
  # split of the training data.
  keys = {'validation': 'eval_files', 'test': 'test_files'}
  if source == 'tfds':
    keys = {'validation': 'eval_split', 'test': 'test_split'}
  named = {k: data_cfg.get(v, '') if source != 'python_docs' else '' for k, v in keys.items()}
  if split == 'test' and not named['test'] and 'test_fraction' not in data_cfg:
    raise ValueError(
      'this config has no data.test_fraction (saved before test splits existed, so its '
      'training data held the test examples): evaluate the validation split, or name '
      f'data.{keys["test"]}.'
    )
  if source == 'python_docs':
    return _offline(task, data_cfg, split), None
  eval_fraction, test_fraction = fractions(data_cfg)
  own = split != 'train' and bool(named[split])  # read as is, no hash split
  if source == 'files':
    if not data_cfg.files:
      raise ValueError(
        "data.source='files' needs --config.data.files=PATH[,PATH...] (formats: the "
        f'docstring of {tasks.get(task).__name__}).'
      )
    read = _reader(task, 'read_file', source)
    key = keys[split] if own else 'files'
    examples, names = [e for path in sources.expand(data_cfg[key], key) for e in read(path)], None
  else:
    if not data_cfg.tfds_name:
      raise ValueError("data.source='tfds' needs --config.data.tfds_name=NAME.")
    rows, info = load_tfds(
      data_cfg.tfds_name,
      named[split] if own else data_cfg.split,
      data_cfg.data_dir,
      int(data_cfg.max_examples),
    )
    examples, names = _reader(task, 'tfds_examples', source)(data_cfg.tfds_name, rows, info)
  if own:
    return examples, names
  # A QA context with all its questions lands on one side.
  return hash_split(
    examples,
    lambda e: e.get('context') or json.dumps(e, sort_keys=True),
    split,
    0.0 if named['validation'] else eval_fraction,
    0.0 if named['test'] else test_fraction,
  ), names
