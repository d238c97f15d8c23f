"""Where pretraining text comes from: a stream of documents (``str``) in a fixed order.

Three sources, chosen by ``data_cfg.source`` (the vocabulary of :mod:`lm.data.sources`):

* ``'python_docs'``: English text that ships with every Python install (stdlib docstrings), so
  training and tests work offline with no data; the sources the offline downstream sets read
  (the pydoc topics, a hash-chosen share of the modules) are left out (lm/data/python_docs.py).
* ``'files'``: the user's own local text files, ``data_cfg.files`` (see :func:`read_text_files`).
* ``'tfds'``: the TFDS dataset ``data_cfg.tfds_name``, read from an already prepared ``data_dir``.

:func:`iter_documents` streams any of them with bounded memory; :mod:`lm.data.prepare`
turns the stream into token shards once.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sys
from typing import Iterator, Optional

from lm.data import python_docs
from lm.data import sources
from lm.data.text_files import TextStats, expand_paths, iter_text_files


def python_docs_corpus() -> list[str]:
  """The pretraining side of Python's bundled docs: stdlib docstrings of the modules not
  reserved for the downstream sets (:mod:`lm.data.python_docs` draws the line), in a fixed
  order; read at run time, never copied."""
  return python_docs.pretraining_documents()


def _tfds_examples(name: str, split: str, data_dir, text_key: str):
  """Stream one TFDS split's texts through tf.data: nothing is materialised."""
  import tensorflow_datasets as tfds

  if name == 'local_text_files':
    from lm.data import text_dataset  # noqa: F401  (deferred: tensorflow_datasets; registers the builder)
  try:
    ds = tfds.load(name, split=split, data_dir=data_dir, download=False)
  except (AssertionError, tfds.core.registered.DatasetNotFoundError) as e:
    first_line = str(e).splitlines()[0]
    raise FileNotFoundError(
      f'TFDS dataset {name!r} (split {split!r}) is not prepared under data_dir={data_dir!r} '
      f'({first_line}): run `tfds build {name} --data_dir=DIR` and pass '
      '--config.data.data_dir=DIR.'
    ) from None
  if text_key not in ds.element_spec:
    raise ValueError(
      f'TFDS dataset {name!r} has no feature {text_key!r} (has '
      f'{sorted(ds.element_spec)}): set --config.data.text_key.'
    )
  for t in tfds.as_numpy(ds.map(lambda ex: ex[text_key])):
    yield t.decode('utf-8', errors='replace')


def field(cfg, key, default):
  """A config field, or ``default`` where it is missing, None or ''."""
  value = getattr(cfg, key, None)
  return default if value is None or value == '' else value


def text_files(data_cfg) -> list[str]:
  """The sorted file list of a source='files' config (errors name the flag to fix)."""
  files = [f.strip() for f in field(data_cfg, 'files', '').split(',') if f.strip()]
  if not files:
    raise ValueError(
      "data.source='files' needs files: pass --config.data.files=PATH_OR_GLOB[,PATH_OR_GLOB...]."
    )
  return expand_paths(files)


def tfds_name(data_cfg) -> str:
  """``data.tfds_name`` of a source='tfds' config (an error naming the flag when empty)."""
  name = field(data_cfg, 'tfds_name', '')
  if not name:
    raise ValueError("data.source='tfds' needs --config.data.tfds_name=NAME.")
  return name


def iter_documents(data_cfg, stats: Optional[TextStats] = None) -> Iterator[str]:
  """Every document of ``data_cfg.source`` in a fixed order, streamed (bounded memory);
  ``max_documents`` (0 = all) caps every source."""
  sources.check(data_cfg)
  source = field(data_cfg, 'source', 'python_docs')
  max_documents = int(field(data_cfg, 'max_documents', 0))
  if source == 'python_docs':
    docs = iter(python_docs_corpus())
  elif source == 'files':
    docs = iter_text_files(text_files(data_cfg), stats if stats is not None else TextStats())
  else:
    split = field(data_cfg, 'split', 'train')
    if max_documents:  # let tf.data read only what is needed
      split = f'{split}[:{max_documents}]'
    docs = _tfds_examples(
      tfds_name(data_cfg),
      split,
      field(data_cfg, 'data_dir', None),
      field(data_cfg, 'text_key', 'text'),
    )
  return itertools.islice(docs, max_documents) if max_documents else docs


def source_listing(data_cfg) -> dict:
  """A cheap fingerprint of what the source is now (file names and sizes, or the TFDS
  name and split), to tell whether prepared data still matches it without reading text."""
  source = field(data_cfg, 'source', 'python_docs')
  if source == 'python_docs':
    return {'python': sys.version.split()[0]}
  if source == 'tfds':
    return {'tfds': tfds_name(data_cfg), 'split': field(data_cfg, 'split', 'train')}
  h, total, files = hashlib.sha256(), 0, text_files(data_cfg)
  for path in files:
    size = os.path.getsize(path)
    total += size
    h.update(f'{os.path.abspath(path)}\0{size}\0'.encode())
  return {'files': len(files), 'bytes': total, 'sha256': h.hexdigest()}


def load_corpus(data_cfg) -> list[str]:
  """All documents as a list: only for small corpora (fine-tuning defaults, tests);
  pretraining streams them through :mod:`lm.data.prepare` instead."""
  stats = TextStats()
  docs = list(iter_documents(data_cfg, stats))
  if stats.files:
    print(stats.summary())
  return docs
