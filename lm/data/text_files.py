"""Local UTF-8 text files read into documents (blank lines end a document), with the repairs
counted: the `files` data source, and the local-text TFDS builder (`lm.data.text_dataset`)."""

from __future__ import annotations

import dataclasses
import os
from typing import Iterable, Union

from lm.data import sources

MAX_LINE_CHARS = 1_000_000


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


def expand_paths(paths_or_globs: Union[str, Iterable[str]]) -> list[str]:
  """Paths, globs or directories -> sorted file list; anything missing is an error."""
  if isinstance(paths_or_globs, (str, os.PathLike)):
    paths_or_globs = [paths_or_globs]
  return sources.expand(paths_or_globs, 'files')


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
  files = expand_paths(paths_or_globs)
  return list(iter_text_files(files, stats, max_line_chars)), stats
