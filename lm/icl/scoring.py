"""The model side of in-context learning: a causal LM's embeddings, losses and label scores.

Scoring (`LM.score_candidates`): all candidates of one test example are rows of one batch
(several test examples share a jitted call), right-padded with an attention mask (causal
attention means padding after a row's last token can never change it). A candidate's score is
the sum (``score='sum'``) or the mean (``score='mean'``, the default: labels have different token
counts) of ``log p(label token | prompt, earlier label tokens)``; the prediction is the argmax.
Per-example gradients live in gradients.py (a mixin of `LM`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from lm import progress
from lm import sharding
from lm.icl.gradients import GradientsMixin


def _bucket(n: int, cap: int) -> int:
  """Padded length: the next multiple of 32 (at least 16), at most `cap` (fewer compiles)."""
  return int(min(cap, max(16, -(-n // 32) * 32)))


def pad(seqs: Sequence[Sequence[int]], length: int, pad_id: int, rows: Optional[int] = None):
  """Right-padded ids [rows, length] and attention mask (1 = real token)."""
  rows = len(seqs) if rows is None else rows
  ids = np.full((rows, length), pad_id, np.int32)
  mask = np.zeros((rows, length), np.int32)
  for i, s in enumerate(seqs):
    if len(s) > length:
      raise ValueError(f'sequence of {len(s)} tokens does not fit length {length}.')
    ids[i, : len(s)] = s
    mask[i, : len(s)] = 1
  return ids, mask


class LM(GradientsMixin):
  """A causal LM's params plus the jitted functions selection and scoring need.

  Every call pads to fixed shapes (rows to `batch_size`, length to a multiple of 32 up to
  `max_len`) so a handful of compilations serve a whole evaluation. With a `mesh`, each call's
  rows are split over its data-parallel devices (`batch_size` rounds up to a multiple of them;
  each process puts only its own block of rows) and the results come back whole on every
  process; params not yet on the mesh are replicated over it.
  """

  def __init__(self, model, params, pad_id: int, max_len: int, batch_size: int = 16, mesh=None):
    self.model, self.mesh = model, mesh
    self.pad_id, self.max_len = int(pad_id), int(max_len)
    self.shards = 1 if mesh is None else mesh.shape['data'] * mesh.shape['fsdp']
    self.batch_size = -(-int(batch_size) // self.shards) * self.shards
    if mesh is not None:
      on_mesh = lambda x: getattr(getattr(x, 'sharding', None), 'mesh', None) == mesh
      params = jax.tree.map(
        lambda x: x if on_mesh(x) else jax.device_put(x, NamedSharding(mesh, P())), params
      )
    self.params = params
    self.num_layers = model.cfg.num_layers
    self.scan_layers = model.cfg.scan_layers
    self._hidden = self._jit(self._pooled_hidden)
    self._nll = self._jit(self._weighted_nll)
    self._score = self._jit(self._label_logprob)

  def _jit(self, fn):
    """jax.jit, with its outputs replicated and the mesh's rules in scope under a mesh."""
    if self.mesh is None:
      return jax.jit(fn)
    return sharding.with_mesh(jax.jit(fn, out_shardings=NamedSharding(self.mesh, P())), self.mesh)

  def _rows(self, *arrays):
    """A call's row-padded numpy inputs as it takes them: this process's rows, batch-sharded
    over the mesh (as is without one)."""
    if self.mesh is None:
      return arrays
    mine = sharding.process_rows(len(arrays[0]), self.mesh)
    return sharding.shard_batch(tuple(a[mine] for a in arrays), self.mesh)

  def _logprobs(self, params, ids, mask):
    """log p(ids[:, t] | ids[:, :t]) for t >= 1: [B, T-1]."""
    logits = self.model.apply({'params': params}, ids, attention_mask=mask)
    lp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(lp, ids[:, 1:, None], axis=-1)[..., 0]

  def _batched(self, seqs, fn, weights=None):
    """fn(ids, mask[, weights]) over padded batches of batch_size rows (one compiled shape per
    length bucket), concatenated without the padding rows."""
    out, b = [], self.batch_size
    length = _bucket(max(len(s) for s in seqs), self.max_len)
    for i in progress.track(range(0, len(seqs), b), 'score'):
      chunk = seqs[i : i + b]
      args = pad(chunk, length, self.pad_id, rows=b)
      if weights is not None:
        args = (*args, pad(weights[i : i + b], length, 0, rows=b)[0])
      out.append(np.asarray(fn(*self._rows(*args)))[: len(chunk)])
    return np.concatenate(out)

  # --- embeddings -------------------------------------------------------------------------------

  def _pooled_hidden(self, params, ids, mask):
    h = self.model.apply({'params': params}, ids, attention_mask=mask, method='hidden')
    m = mask[..., None].astype(jnp.float32)
    return (h.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1.0)

  def embed(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
    """Final hidden states mean-pooled over each sequence's real tokens: [N, D]."""
    return self._batched(seqs, lambda ids, mask: self._hidden(self.params, ids, mask))

  # --- losses -----------------------------------------------------------------------------------

  def _weighted_nll(self, params, ids, mask, weights):
    tok = self._logprobs(params, ids, mask)
    w = weights[:, 1:].astype(jnp.float32)
    return -(tok * w).sum(-1) / jnp.maximum(w.sum(-1), 1.0)

  def mean_loss(self, seqs, weights=None) -> np.ndarray:
    """Mean token NLL of each sequence over its target tokens (`weights[i][t]` = 1: token t is
    scored; default every token after the first): [N]."""
    weights = weights or [[0] + [1] * (len(s) - 1) for s in seqs]
    return self._batched(seqs, lambda ids, mask, w: self._nll(self.params, ids, mask, w), weights)

  # --- candidate scoring ------------------------------------------------------------------------

  def _label_logprob(self, params, ids, mask, start, targets, target_mask):
    """Per row: sum over label tokens j of log p(targets[j] | ids[:start + j]); [B], and the
    token count. Only the label positions go through the vocab projection."""
    h = self.model.apply({'params': params}, ids, attention_mask=mask, method='hidden')
    pos = jnp.clip(start[:, None] - 1 + jnp.arange(targets.shape[1])[None], 0, ids.shape[1] - 1)
    h = jnp.take_along_axis(h, pos[..., None], axis=1)  # [B, Lc, D]
    logits = self.model.apply({'params': params}, h, method='logits')
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    tok = jnp.take_along_axis(lp, targets[..., None], axis=-1)[..., 0]
    m = target_mask.astype(jnp.float32)
    return (tok * m).sum(-1), m.sum(-1)

  def score_candidates(self, requests, score: str = 'mean') -> list[np.ndarray]:
    """requests: [(prompt ids, [candidate ids, ...]), ...] -> per request, one score per
    candidate: the sum or mean log-prob of the candidate's tokens after the prompt.

    All candidates of a request are rows of the same jitted call; several requests share it.
    """
    if score not in ('sum', 'mean'):
      raise ValueError(f"score={score!r}: use 'sum' or 'mean' (log-prob of the label tokens).")
    if not requests:
      return []
    lc = max(len(c) for _, cands in requests for c in cands)
    longest = max(len(p) + lc for p, _ in requests)
    if longest > self.max_len:
      raise ValueError(f'a prompt of {longest} tokens exceeds max_len={self.max_len}.')
    per_call = max(self.batch_size, max(len(c) for _, c in requests))
    per_call = -(-per_call // self.shards) * self.shards  # splits over the mesh too
    results, i = [], 0
    while i < len(requests):
      group, rows = [], 0
      while i < len(requests) and rows + len(requests[i][1]) <= per_call:
        group.append(requests[i])
        rows += len(requests[i][1])
        i += 1
      seqs, starts, tgts = [], [], []
      for prompt, cands in group:
        for c in cands:
          if not len(c):
            raise ValueError('an empty candidate (label verbalizer) has no tokens to score.')
          seqs.append(list(prompt) + list(c))
          starts.append(len(prompt))
          tgts.append(c)
      length = _bucket(max(len(s) for s in seqs), self.max_len)
      ids, mask = pad(seqs, length, self.pad_id, rows=per_call)
      targets, tmask = pad(tgts, lc, 0, rows=per_call)
      start = np.ones(per_call, np.int32)
      start[: len(starts)] = starts
      total, count = self._score(self.params, *self._rows(ids, mask, start, targets, tmask))
      total, count = np.asarray(total), np.asarray(count)
      s = total if score == 'sum' else total / np.maximum(count, 1)
      r = 0
      for _, cands in group:
        results.append(s[r : r + len(cands)])
        r += len(cands)
    return results
