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

import dataclasses
import hashlib
import itertools
import os
import sys
from typing import Iterable, Iterator, Optional, Union

from lm.data import python_docs
from lm.data import sources

MAX_LINE_CHARS = 1_000_000


def python_docs_corpus() -> list[str]:
  """The pretraining side of Python's bundled docs: stdlib docstrings of the modules not
  reserved for the downstream sets (:mod:`lm.data.python_docs` draws the line), in a fixed
  order; read at run time, never copied."""
  return python_docs.pretraining_documents()


@dataclasses.dataclass
class TextStats:
  """What reading text files had to repair, so a user can spot a broken input."""

  files: int = 0
  documents: int = 0
  lines: int = 0  # non-empty lines kept (before long-line splitting)
  replaced_chars: int = 0  # U+FFFD inserted for invalid UTF-8 bytes
  empty_lines: int = 0  # empty or whitespace-only lines (document separators)
  long_lines: int = 0  # lines over max_line_chars, split into pieces

  def summary(self) -> str:
    return (
      f'text_files: {self.documents} documents from {self.files} file(s); '
      f'{self.replaced_chars} invalid UTF-8 sequences replaced, {self.long_lines} '
      f'over-long lines split, {self.empty_lines} blank lines dropped.'
    )


def _expand(paths_or_globs: Union[str, Iterable[str]]) -> list[str]:
  """Paths, globs or directories -> sorted file list; anything missing is an error."""
  if isinstance(paths_or_globs, (str, os.PathLike)):
    paths_or_globs = [paths_or_globs]
  return sources.expand(paths_or_globs, 'files')


def doc_hash(doc: str) -> bytes:
  return hashlib.sha256(doc.encode('utf-8', errors='replace')).digest()


def is_held_out(digest: bytes, fraction: float) -> bool:
  """Deterministic split by content: the first 8 bytes of a document's sha256 as a uniform
  number in [0, 1). Stable across runs, machines, file order and worker count, and a
  document repeated anywhere in the corpus always lands on the same side."""
  return int.from_bytes(digest[:8], 'big') / 2.0**64 < fraction


def iter_text_file(path: str, stats: TextStats, max_line_chars: int = MAX_LINE_CHARS):
  """Documents of one file, read line by line (memory bounded by the longest document)."""
  stats.files += 1
  current: list[str] = []
  with open(path, 'rb') as f:
    for raw in f:
      line = raw.decode('utf-8', errors='replace').rstrip('\r\n')
      if '\ufffd' in line:
        stats.replaced_chars += line.count('\ufffd') - raw.count('\ufffd'.encode())
      if not line.strip():
        stats.empty_lines += 1
        if current:
          stats.documents += 1
          yield '\n'.join(current)
          current = []
        continue
      stats.lines += 1
      if len(line) > max_line_chars:
        stats.long_lines += 1
        current.extend(line[i : i + max_line_chars] for i in range(0, len(line), max_line_chars))
      else:
        current.append(line)
  if current:
    stats.documents += 1
    yield '\n'.join(current)


def iter_text_files(files: list[str], stats: TextStats, max_line_chars: int = MAX_LINE_CHARS):
  """Documents of every file in order; files with no text at all are an error."""
  before = stats.documents
  for path in files:
    yield from iter_text_file(path, stats, max_line_chars)
  if stats.documents == before:
    raise ValueError(
      f'Text corpus {files} is empty (no non-blank lines): '
      'point --config.data.files at files with text.'
    )


def read_text_files(paths_or_globs, max_line_chars: int = MAX_LINE_CHARS):
  """Read local UTF-8 text into documents; returns ``(docs, TextStats)``.

  Format: one or more blank (or whitespace-only) lines end a document, and every
  file ends a document. Lines of a document are joined with ``\\n``. Invalid UTF-8
  is replaced (not fatal) and counted; lines longer than ``max_line_chars`` are cut
  into pieces so one giant line cannot blow up tokenization.
  """
  stats = TextStats()
  files = _expand(paths_or_globs)
  return list(iter_text_files(files, stats, max_line_chars)), stats


def _tfds_examples(name: str, split: str, data_dir, text_key: str):
  """Stream one TFDS split's texts through tf.data: nothing is materialised."""
  import tensorflow_datasets as tfds

  if name == 'local_text_files':
    import lm.data.text_dataset  # noqa: F401  (registers the builder)
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
  return _expand(files)


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
