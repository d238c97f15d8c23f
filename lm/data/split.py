"""Deterministic splits by content hash, in one place: stable across runs, machines, file
order and worker count, and a text repeated anywhere always lands on the same side.

Three schemes, each kept exactly as the data it splits was first split (changing one would move
examples between train and test):
  * pretraining documents: `doc_held_out(doc_hash(doc), fraction)`, on the sha256 digest;
  * fine-tuning task examples: `split_name(key, ...)` -> 'train' | 'validation' | 'test', on
    sha256 of the example's key;
  * preference pairs, text-to-text examples and the downstream documents they come from:
    `split_index(text, ...)` -> 0 train | 1 validation | 2 test, on sha256('held-out:' + text).
"""

import hashlib

SPLITS = ('train', 'validation', 'test')


def unit(text: str, salt: str = '') -> float:
  """A deterministic uniform number in [0, 1) from sha256 of salt + text."""
  return _unit_of(doc_hash(salt + text))


def _unit_of(digest: bytes) -> float:
  return int.from_bytes(digest[:8], 'big') / 2.0**64


def doc_hash(doc: str) -> bytes:
  return hashlib.sha256(doc.encode('utf-8', errors='replace')).digest()


def doc_held_out(digest: bytes, fraction: float) -> bool:
  """Whether a pretraining document (by its `doc_hash`) is held out: the first 8 bytes of its
  sha256 as a uniform number in [0, 1), below `fraction`."""
  return _unit_of(digest) < fraction


def split_name(key: str, eval_fraction: float, test_fraction: float = 0.0) -> str:
  """'validation', 'test' or 'train' by the first 8 bytes of sha256(key) as a number u in
  [0, 1): u < eval_fraction is validation, the next test_fraction is test. Validation is the
  same set whatever test_fraction is; test is carved out of what was training data."""
  u = unit(key)
  if u < eval_fraction:
    return 'validation'
  return 'test' if u < eval_fraction + test_fraction else 'train'


def split_index(text: str, eval_fraction: float, test_fraction: float = 0.0) -> int:
  """0 train, 1 validation, 2 test, by a salted hash of `text`: validation is the same set
  whatever test_fraction is, test is carved out of training."""
  u = unit(text, 'held-out:')
  return 1 if u < eval_fraction else 2 if u < eval_fraction + test_fraction else 0
