"""Reading prepared token shards: the on-disk format, its checks, and random access.

A prepared directory (written by :mod:`lm.data.prepare`) holds::

    manifest.json               written last: its presence means the data is complete
    tokenizer.json              the tokenizer every process loads
    shards/NNNNN.json           a shard's commit record (written after its files)
    shards/NNNNN.{train,eval}.bin   token ids, little-endian uint16 (vocab <= 65536) or uint32
    shards/NNNNN.{train,eval}.idx   int64 document starts, n_docs + 1 entries from 0

Local shards are numpy memmaps: a batch row reads only its own pages, so host memory
does not grow with the corpus and each host touches only the rows it trains on. Remote
paths (``gs://...``, anything etils epath opens) are read by ranged reads instead, with
each shard's document index held in memory (8 bytes a document).
"""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np
from etils import epath

from lm.data.pretrain import ShardedCorpus, TokenizedCorpus

FORMAT = 1
MANIFEST = 'manifest.json'
TOKENIZER = 'tokenizer.json'
SPLITS = ('train', 'eval')


def shard_name(i: int) -> str:
  return f'{i:05d}'


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype('<u2') if vocab_size <= 1 << 16 else np.dtype('<u4')


def is_remote(path) -> bool:
  return '://' in str(path)


def read_json(path) -> Optional[dict]:
  path = epath.Path(path)
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except ValueError:
    raise ValueError(
      f'{path} is not valid JSON (a damaged prepared directory): delete '
      f'{path.parent} and prepare again.'
    ) from None


def write_json(path, obj) -> None:
  """Write then rename, so a reader never sees half a file."""
  path = epath.Path(path)
  tmp = path.parent / f'{path.name}.tmp'
  tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
  tmp.replace(path)


class _RemoteTokens:
  """Slices of a remote token file by ranged reads (no local copy)."""

  def __init__(self, path, dtype: np.dtype, count: int):
    self.path, self.dtype, self.count = epath.Path(path), dtype, count

  def __len__(self):
    return self.count

  def __getitem__(self, index: slice) -> np.ndarray:
    start, stop, _ = index.indices(self.count)
    with self.path.open('rb') as f:
      f.seek(start * self.dtype.itemsize)
      raw = f.read(max(0, stop - start) * self.dtype.itemsize)
    return np.frombuffer(raw, self.dtype)


def _array(path, dtype: np.dtype, count: int, remote: bool):
  if count == 0:
    return np.zeros(0, dtype)
  if remote:
    return _RemoteTokens(path, dtype, count)
  return np.memmap(os.fspath(path), dtype=dtype, mode='r', shape=(count,))


def expected_bytes(entry: dict, split: str, dtype: np.dtype) -> dict:
  """File name -> size in bytes that a committed shard must have."""
  name, part = entry['name'], entry[split]
  return {
    f'{name}.{split}.bin': part['tokens'] * dtype.itemsize,
    f'{name}.{split}.idx': (part['docs'] + 1) * 8,
  }


def check_files(directory, entry: dict, dtype: np.dtype) -> None:
  """Every file of a shard exists with its recorded size (cheap: no data is read)."""
  shards = epath.Path(directory) / 'shards'
  for split in SPLITS:
    for name, size in expected_bytes(entry, split, dtype).items():
      path = shards / name
      if not path.exists():
        raise FileNotFoundError(
          f'prepared shard {path} is missing: delete {directory} '
          'and prepare again (python -m lm.data.prepare --config=...).'
        )
      if path.stat().length != size:
        raise ValueError(
          f'prepared shard {path} is corrupt ({path.stat().length} bytes, '
          f'manifest says {size}): delete {directory} and prepare again.'
        )


def open_split(directory, split: str, manifest: dict) -> ShardedCorpus:
  """The 'train' or 'eval' documents of a prepared directory, memory-mapped."""
  dtype = np.dtype(manifest['dtype'])
  remote = is_remote(directory)
  shards = epath.Path(directory) / 'shards'
  parts = []
  for entry in manifest['shards']:
    check_files(directory, entry, dtype)
    part = entry[split]
    if not part['docs']:
      continue
    name = f'{entry["name"]}.{split}'
    idx_path = shards / f'{name}.idx'
    if remote:
      starts = np.frombuffer(idx_path.read_bytes(), '<i8')
    else:
      starts = np.memmap(os.fspath(idx_path), dtype='<i8', mode='r')
    if starts[0] != 0 or starts[-1] != part['tokens']:
      raise ValueError(
        f'prepared index {idx_path} does not match its tokens: delete '
        f'{directory} and prepare again.'
      )
    tokens = _array(shards / f'{name}.bin', dtype, part['tokens'], remote)
    parts.append(TokenizedCorpus(tokens, starts))
  return ShardedCorpus(parts)


def open_eval(directory, manifest: dict) -> Optional[ShardedCorpus]:
  """The held-out documents, or None when there are none: training documents are never
  scored as held-out ones (`no_eval_reason` says why)."""
  held_out = open_split(directory, 'eval', manifest)
  return held_out if held_out.num_docs else None


def no_eval_reason(directory, manifest: dict) -> str:
  """Why a prepared directory has no held-out documents, in a few words."""
  fraction = manifest.get('spec', {}).get('eval_fraction')
  if not fraction:
    return 'data.eval_fraction=0'
  return (
    f'no held-out documents in {directory} (data.eval_fraction={fraction} of its '
    f'{manifest.get("docs_read", "?")} documents caught none: raise it)'
  )
