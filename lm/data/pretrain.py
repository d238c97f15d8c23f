"""Step-indexed pretraining batches (numpy only) for exact resume and multi-host runs.

``get_batch(step, process_index, process_count)`` is a pure function of
(seed, step, corpus, process_index, process_count): every global row ``r`` draws
from its own ``np.random.default_rng([seed, step, r])``, and a process returns
rows ``[pi*B/pc, (pi+1)*B/pc)`` of the global batch. So a run resumed at step s
sees exactly the batches an uninterrupted run would, and 1 or N processes see
the same global data. There is no iterator state to checkpoint.

The corpus is a :class:`TokenizedCorpus` in memory or a :class:`ShardedCorpus` of prepared
shards memory-mapped from disk (:mod:`lm.data.shards`); a row reads only the tokens it
holds, so each process touches only its own rows and host memory does not grow with the
corpus.

Evaluation: build a batcher on the eval split with a fixed seed and call
``eval_batches(n)`` (= ``get_batch(0..n-1)``), so every evaluation sees the same data.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from typing import Iterator, Optional

import numpy as np

from lm.data.tokenizer import Tokenizer


@dataclasses.dataclass
class TokenizedCorpus:
  """Documents' ids concatenated (no specials); doc d is tokens[doc_starts[d]:doc_starts[d+1]].

  The arrays may be in memory or numpy memmaps of a prepared shard (:mod:`lm.data.shards`):
  every method reads only the rows it returns.
  """

  tokens: np.ndarray  # int32 in memory; uint16/uint32 on disk  [N]
  doc_starts: np.ndarray  # int64 [n_docs + 1]

  @property
  def num_docs(self) -> int:
    return len(self.doc_starts) - 1

  @property
  def num_tokens(self) -> int:
    return len(self.tokens)

  def doc(self, d: int) -> np.ndarray:
    return np.asarray(self.tokens[self.doc_starts[d] : self.doc_starts[d + 1]], np.int32)

  def doc_at_token(self, p: int) -> int:
    return int(np.searchsorted(self.doc_starts, p, side='right') - 1)

  def num_windows(self, length: int) -> int:
    """Start positions of ``length + 1`` tokens in the ``doc0 eos doc1 eos ...`` stream."""
    return max(0, self.num_tokens + self.num_docs - length)

  def window(self, o: int, length: int):
    """Stream positions [o, o + length): (ids with eos as -1, is_eos). At most ``length``
    documents can touch the window, so only that slice of the index is read."""
    n = self.num_docs
    # Doc d's stream start is doc_starts[d] + d: bisect that monotone sequence.
    d = bisect.bisect_right(range(n), o, key=lambda k: int(self.doc_starts[k]) + k) - 1
    starts = np.asarray(self.doc_starts[d : min(n, d + length) + 1], np.int64)
    stream_starts = starts + np.arange(d, d + len(starts))
    p = o + np.arange(length)
    k = np.searchsorted(stream_starts, p, side='right') - 1
    j = p - stream_starts[k]
    is_eos = j == (starts[np.minimum(k + 1, len(starts) - 1)] - starts[k])
    first = int(starts[0] + j[0])
    ids = np.full(length, -1, np.int32)
    ids[~is_eos] = self.tokens[first : first + int((~is_eos).sum())]
    return ids, is_eos

  @classmethod
  def from_lists(cls, ids: list) -> 'TokenizedCorpus':
    """Empty documents are dropped: they can give neither a segment nor a target."""
    ids = [np.asarray(x, np.int32) for x in ids if len(x)]
    starts = np.zeros(len(ids) + 1, np.int64)
    np.cumsum([len(x) for x in ids], out=starts[1:])
    tokens = np.concatenate(ids) if ids else np.zeros(0, np.int32)
    return cls(tokens.astype(np.int32), starts)


class ShardedCorpus:
  """Many :class:`TokenizedCorpus` shards read as one (global doc ids and token positions).

  Per-shard counts are the only thing held in memory, so opening a terabyte of shards
  costs kilobytes. A CLM window never crosses a shard boundary.
  """

  def __init__(self, shards: list):
    self.shards = [s for s in shards if s.num_docs]
    self._doc_offsets = np.cumsum([0] + [s.num_docs for s in self.shards])
    self._token_offsets = np.cumsum([0] + [s.num_tokens for s in self.shards])
    self._window_offsets = {}

  @property
  def num_docs(self) -> int:
    return int(self._doc_offsets[-1])

  @property
  def num_tokens(self) -> int:
    return int(self._token_offsets[-1])

  @staticmethod
  def _locate(offsets, i: int):
    s = int(np.searchsorted(offsets, i, side='right') - 1)
    return s, int(i - offsets[s])

  def doc(self, d: int) -> np.ndarray:
    s, local = self._locate(self._doc_offsets, d)
    return self.shards[s].doc(local)

  def doc_at_token(self, p: int) -> int:
    s, local = self._locate(self._token_offsets, p)
    return int(self._doc_offsets[s]) + self.shards[s].doc_at_token(local)

  def _windows(self, length: int):
    if length not in self._window_offsets:
      self._window_offsets[length] = np.cumsum([0] + [s.num_windows(length) for s in self.shards])
    return self._window_offsets[length]

  def num_windows(self, length: int) -> int:
    return int(self._windows(length)[-1])

  def window(self, o: int, length: int):
    s, local = self._locate(self._windows(length - 1), o)
    return self.shards[s].window(local, length)


def log_rows(kind: str, step: int, rows, sources=None) -> None:
  """:func:`lm.distributed.log_rows` (LM_ROW_LOG), imported only when a batcher logs: this
  module stays numpy only."""
  from lm import distributed  # noqa: PLC0415  (deferred: jax; this module stays numpy only)

  distributed.log_rows(kind, step, rows, sources)


class Batcher:
  """Shared process slicing; subclasses build one row from its own rng."""

  # Where this batcher's reads go under LM_ROW_LOG (the global rows of each step this process
  # read): the training job names its batcher's; '' (eval, a mixture's components) logs none.
  row_log = ''

  def __init__(self, batch_size: int, seed: int):
    self.batch_size, self.seed = int(batch_size), int(seed)

  def _row(self, rng: np.random.Generator) -> dict:
    raise NotImplementedError

  def row_at(self, step: int, r: int) -> dict:
    """Global row ``r`` of ``step``, from its own rng: what a mixture reads from this source."""
    return self._row(np.random.default_rng([self.seed, int(step), r]))

  def rows(self, step: int, rows) -> list:
    """Global rows ``rows`` of ``step``, each a pure function of (seed, step, row)."""
    rows = list(rows)
    if self.row_log:
      log_rows(self.row_log, step, rows)
    return [self.row_at(step, r) for r in rows]

  def get_batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict:
    if self.batch_size % process_count or not 0 <= process_index < process_count:
      raise ValueError(
        f'Global batch_size {self.batch_size} must divide by process_count '
        f'{process_count} (process_index {process_index}): change batch_size.'
      )
    per = self.batch_size // process_count
    rows = self.rows(step, range(process_index * per, (process_index + 1) * per))
    return {k: np.stack([row[k] for row in rows]) for k in rows[0]}

  def eval_batches(
    self, num_batches: int, process_index: int = 0, process_count: int = 1
  ) -> Iterator[dict]:
    """The same ``num_batches`` batches every time: steps 0..num_batches-1."""
    for step in range(num_batches):
      yield self.get_batch(step, process_index, process_count)


class MLMBatcher(Batcher):
  """BERT masked-LM (+ optional next-sentence) rows: ``[CLS] A [SEP] B [SEP] [PAD]...``.

  Masks exactly ``min(P, max(1, round(n * mlm_prob)))`` of the n non-special
  tokens (80% [MASK], 10% random non-special id, 10% unchanged). Default
  ``P = max_predictions = ceil(seq_len * mlm_prob)`` (20 for 128), which always
  holds every masked token. Padding prediction slots have position 0, id 0, weight 0.
  ``nsp_labels``: 0 = B is A's real continuation, 1 = B is from another document
  (HF BERT convention). A document too short to continue (1 token) always gets 1.
  """

  def __init__(
    self,
    corpus,
    tokenizer: Tokenizer,
    seq_len: int,
    batch_size: int,
    seed: int,
    mlm_prob: float = 0.15,
    nsp: bool = True,
    max_predictions: Optional[int] = None,
  ):
    super().__init__(batch_size, seed)
    needed = {n: getattr(tokenizer, n + '_id') for n in ('cls', 'sep', 'mask', 'pad')}
    if any(v is None for v in needed.values()):
      raise ValueError(
        f'MLM needs a tokenizer with [CLS]/[SEP]/[MASK]/[PAD], got '
        f"{needed}: use tokenizer.kind='wordpiece'."
      )
    if corpus.num_docs < (2 if nsp else 1) or seq_len < 8:
      raise ValueError(
        f'Corpus of {corpus.num_docs} documents / seq_len={seq_len} is too '
        'small for one MLM sequence: need >= 2 documents (NSP) and seq_len >= 8.'
      )
    self.corpus, self.seq_len, self.mlm_prob, self.nsp = corpus, int(seq_len), mlm_prob, nsp
    self.cls, self.sep, self.mask, self.pad = (needed[n] for n in ('cls', 'sep', 'mask', 'pad'))
    self.max_predictions = int(max_predictions or max(1, math.ceil(seq_len * mlm_prob)))
    self.max_tokens = self.seq_len - (3 if nsp else 2)
    special = np.asarray(tokenizer.special_ids, np.int64)
    self.replacement_ids = np.setdiff1d(np.arange(tokenizer.vocab_size), special).astype(np.int32)

  def _sample_span(self, rng, d: int, length: int):
    """A window of at most ``length`` tokens at a random offset inside document d."""
    doc = self.corpus.doc(d)
    start = rng.integers(0, max(len(doc) - length, 0) + 1)
    return doc[start : start + length]

  def _segments(self, rng):
    c = self.corpus
    # Pick the document by a uniform token position: long documents weigh more.
    d = c.doc_at_token(int(rng.integers(c.num_tokens)))
    if not self.nsp:
      return self._sample_span(rng, d, self.max_tokens), None, None
    span = self._sample_span(rng, d, self.max_tokens)
    len_a = int(rng.integers(1, len(span))) if len(span) >= 2 else 1
    is_random = rng.random() < 0.5 or len(span) < 2
    if not is_random:
      return span[:len_a], span[len_a:], 0
    other = int(rng.integers(c.num_docs - 1))
    other += other >= d
    return span[:len_a], self._sample_span(rng, other, self.max_tokens - len_a), 1

  def _row(self, rng):
    a, b, label = self._segments(rng)
    T, P = self.seq_len, self.max_predictions
    parts = [[self.cls], a, [self.sep]] + ([b, [self.sep]] if b is not None else [])
    ids = np.concatenate([np.asarray(p, np.int32) for p in parts])
    n = len(ids)
    input_ids = np.full(T, self.pad, np.int32)
    input_ids[:n] = ids
    token_type = np.zeros(T, np.int32)
    if b is not None:
      token_type[len(a) + 2 : n] = 1
    candidates = np.concatenate(
      [np.arange(1, len(a) + 1)] + ([np.arange(len(a) + 2, n - 1)] if b is not None else [])
    )
    num = min(P, max(1, int(math.floor(len(candidates) * self.mlm_prob + 0.5))))
    pos = np.sort(rng.choice(candidates, num, replace=False))
    original = input_ids[pos].copy()
    r = rng.random(num)
    random_ids = self.replacement_ids[rng.integers(len(self.replacement_ids), size=num)]
    input_ids[pos] = np.where(r < 0.8, self.mask, np.where(r < 0.9, random_ids, original))
    row = {
      'input_ids': input_ids,
      'token_type_ids': token_type,
      'attention_mask': (np.arange(T) < n).astype(np.int32),
      'masked_positions': np.zeros(P, np.int32),
      'masked_ids': np.zeros(P, np.int32),
      'masked_weights': np.zeros(P, np.float32),
    }
    row['masked_positions'][:num], row['masked_ids'][:num], row['masked_weights'][:num] = (
      pos,
      original,
      1,
    )
    if self.nsp:
      row['nsp_labels'] = np.int32(label)
    return row


class CLMBatcher(Batcher):
  """GPT-style packed rows: a random window of seq_len+1 tokens of ``doc0 eos doc1 eos ...``.

  ``segment_ids`` number documents inside the row from 1; the eos belongs to the
  document it ends, so a new segment starts right after an eos. ``positions``
  restart at 0 at each segment start. ``weights`` are 1 except where the input is
  a document's eos (its target is the next document's first token, which cannot
  be predicted from a different document).
  """

  def __init__(self, corpus, tokenizer: Tokenizer, seq_len: int, batch_size: int, seed: int):
    super().__init__(batch_size, seed)
    eos = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.sep_id
    if eos is None:
      raise ValueError("CLM needs an end-of-document token: use tokenizer.kind='bpe'.")
    if corpus.num_windows(seq_len) < 1:
      raise ValueError(
        f'Corpus of {corpus.num_tokens} tokens is too small for one CLM '
        f'sequence of seq_len={seq_len}: use more text or a smaller seq_len.'
      )
    self.corpus, self.seq_len, self.eos = corpus, int(seq_len), eos
    self.num_windows = corpus.num_windows(self.seq_len)

  def _row(self, rng):
    T = self.seq_len
    window, is_eos = self.corpus.window(int(rng.integers(self.num_windows)), T + 1)
    window[is_eos] = self.eos
    ends = is_eos[:-1]
    segment = 1 + np.concatenate([[0], np.cumsum(ends[:-1])]).astype(np.int32)
    seg_start = np.concatenate([[True], ends[:-1]])
    start_idx = np.maximum.accumulate(np.where(seg_start, np.arange(T), 0))
    return {
      'input_ids': window[:-1],
      'targets': window[1:],
      'segment_ids': segment,
      'positions': (np.arange(T) - start_idx).astype(np.int32),
      'weights': (~ends).astype(np.float32),
    }
