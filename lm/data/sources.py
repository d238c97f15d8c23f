"""The one data-source vocabulary of every job (pretraining, fine-tuning, few-shot, preference),
so a data flag learned for one job means the same in all of them:

* ``data.source``: ``'python_docs'`` (offline default) | ``'files'`` | ``'tfds'``
* ``data.files``: ``source='files'``: the training data, comma-separated paths or globs;
  ``data.eval_files`` (validation: selection) and ``data.test_files`` (test: what is reported),
  each split off by a hash when '' (``data.eval_fraction``, ``data.test_fraction``), in the jobs
  that take them (fine-tuning, few-shot, preference)
* ``data.eval_fraction``: the share split off as held-out (validation) data; 0 (without
  eval_files or eval_split) means no evaluation, said once (:func:`has_held_out`)
* ``data.tfds_name``, ``data.data_dir``, ``data.split`` ('train'), ``data.eval_split``,
  ``data.test_split``: ``source='tfds'``, read from an already prepared ``data_dir``

:func:`check` names the new spelling of an old one (``data.dataset``, ``data.train_file``, ...)
in one line, so an old config or notebook fails at once with the fix.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Iterable, Iterator, Optional, Union

SOURCES = ('python_docs', 'files', 'tfds')

# Old data-config key -> its new spelling.
RENAMED_KEYS = {
  'dataset': "data.source ('python_docs' | 'files' | 'tfds'; a TFDS dataset: data.source='tfds' "
  'and data.tfds_name=NAME)',
  'train_file': 'data.files',
  'eval_file': 'data.eval_files',
  'train_split': 'data.split',
}
RENAMED_SOURCES = {'text_files': 'files', 'jsonl': 'files'}


def _tfds_hint(name) -> str:
  return f"for a TFDS dataset use data.source='tfds' and data.tfds_name={name!r}"


def old_key_error(key: str, value=None) -> Optional[str]:
  """One line naming the new spelling of data.<key> (set to ``value``), or None if the key is
  not an old one."""
  if key not in RENAMED_KEYS:
    return None
  if key == 'dataset' and value not in (None, ''):
    value = str(value)
    new = RENAMED_SOURCES.get(value, value)
    if new in SOURCES:
      use = f'data.source={new!r}' + (' and data.files=PATHS' if new == 'files' else '')
    else:
      use = f"data.source='tfds' and data.tfds_name={value!r}"
    return f'data.dataset was renamed: use {use}.'
  return f'data.{key} was renamed: use {RENAMED_KEYS[key]}.'


def source_error(source) -> Optional[str]:
  """One line for a ``data.source`` outside :data:`SOURCES`, or None."""
  if source in SOURCES:
    return None
  if source in RENAMED_SOURCES:
    return (
      f'data.source={source!r} was renamed: use data.source={RENAMED_SOURCES[source]!r} '
      'with data.files=PATHS.'
    )
  return f'data.source={source!r} is not one of {SOURCES}: ' + _tfds_hint(source) + '.'


def check(data_cfg) -> None:
  """Raises ValueError (one line: the old spelling and the new one) for a data config that
  uses an old key or source name; an old key left empty carries nothing and passes."""
  for key in RENAMED_KEYS:
    value = getattr(data_cfg, key, None)
    if value not in (None, ''):
      raise ValueError(old_key_error(key, value))
  msg = source_error(getattr(data_cfg, 'source', None) or 'python_docs')
  if msg:
    raise ValueError(msg)


NO_EVAL = 'data.eval_fraction=0: no held-out evaluation.'


def has_held_out(data_cfg) -> bool:
  """Whether a job's data config yields held-out data: named files (``eval_files``) or a split
  (``eval_split``, tfds), else a hash split with ``eval_fraction`` > 0. Without any, the job
  skips evaluation (saying NO_EVAL once) instead of scoring training data as held-out."""
  source = getattr(data_cfg, 'source', None) or 'python_docs'
  if source == 'files' and getattr(data_cfg, 'eval_files', ''):
    return True
  if source == 'tfds' and getattr(data_cfg, 'eval_split', ''):
    return True
  return float(getattr(data_cfg, 'eval_fraction', 0) or 0) > 0


def expand(value: Union[str, Iterable[str]], key: str = 'files') -> list[str]:
  """The files that ``data.<key>`` (comma-separated paths or globs, or a list of them; a
  directory: every file under it) names, in order; a pattern that names none is an error
  naming the flag."""
  patterns = value.split(',') if isinstance(value, str) else map(str, value or ())
  out = []
  for pattern in [p.strip() for p in patterns if p.strip()]:
    if glob.has_magic(pattern):
      matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    elif os.path.isdir(pattern):
      matches = sorted(
        p for p in glob.glob(os.path.join(pattern, '**', '*'), recursive=True) if os.path.isfile(p)
      )
    else:
      matches = [pattern] if os.path.isfile(pattern) else []
    if not matches:
      raise FileNotFoundError(f'no file at {pattern!r}: fix --config.data.{key}.')
    out.extend(matches)
  return out


def jsonl_objects(files: str) -> Iterator[tuple[str, dict]]:
  """('path:line', object) for each non-blank line of the JSON-lines files ``data.files`` names;
  a line that is not JSON is an error naming its file and line."""
  for path in expand(files):
    with open(path, encoding='utf-8') as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          yield f'{path}:{n}', json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f'{path}:{n} is not JSON ({e}).') from None


def argv_error(argv) -> Optional[str]:
  """The one-line error for the first ``--config.data.<old key>[=value]`` (or old source name)
  in ``argv``: a locked config rejects an unknown key inside the flag parser with an obscure
  error, before :func:`check` could run."""
  for i, arg in enumerate(argv):
    m = re.match(r'--config\.data\.(\w+)(?:=(.*))?$', arg)
    if not m:
      continue
    key, value = m.groups()
    if value is None and i + 1 < len(argv) and not argv[i + 1].startswith('-'):
      value = argv[i + 1]
    msg = old_key_error(key, value)
    if msg is None and key == 'source' and value is not None:
      msg = source_error(value)
    if msg:
      return f'{arg}: {msg}'
  return None


def tfds_texts(
  name: str, split: str, data_dir, fields: dict, key_flags: str, limit: int = 0
) -> list[dict]:
  """Rows of a prepared TFDS dataset as {our field: text}; `fields` maps our names to its
  feature keys. Nothing is downloaded: an unprepared dataset or a missing feature is one error
  naming the fix (`key_flags`: the config fields that choose the keys)."""
  import tensorflow_datasets as tfds  # noqa: PLC0415  (TensorFlow: only when asked for)

  try:
    ds = tfds.load(name, split=split, data_dir=data_dir, download=False)
  except (AssertionError, tfds.core.registered.DatasetNotFoundError) as e:
    raise FileNotFoundError(
      f'TFDS dataset {name!r} (split {split!r}) is not prepared under data_dir={data_dir!r} '
      f'({str(e).splitlines()[0]}): run `tfds build {name} --data_dir=DIR` and pass '
      '--config.data.data_dir=DIR.'
    ) from None
  missing = [k for k in fields.values() if k not in ds.element_spec]
  if missing:
    raise ValueError(
      f'TFDS dataset {name!r} has no feature(s) {missing} (has {sorted(ds.element_spec)}): '
      f'set {key_flags}.'
    )
  if limit:
    ds = ds.take(limit)
  text = lambda x: x.decode('utf-8', errors='replace')  # noqa: E731
  return [{f: text(ex[k]) for f, k in fields.items()} for ex in tfds.as_numpy(ds)]
