"""What the strategies select from (`Features`), how each field is computed, cosine ranking.

Strategies name the fields they read (their ``NEEDS``) and `compute` fills only those, so a new
strategy over embeddings, losses or gradients needs no edit here; a new kind of feature is a
field plus a `COMPUTE` entry.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np


@dataclasses.dataclass
class Features:
  """Per pool item (and per query: a test example), numpy; None = not computed."""

  num_pool: int
  pool_emb: Optional[np.ndarray] = None  # [N, D] mean-pooled final hidden states
  query_emb: Optional[np.ndarray] = None  # [M, D]
  pool_loss: Optional[np.ndarray] = None  # [N] mean token LM loss of each demonstration
  pool_grad: Optional[np.ndarray] = None  # [N, G] per-example LM-loss gradients (flattened)
  query_grad: Optional[np.ndarray] = None  # [M, G]


def normalize(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cosine_rank(pool: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k rows of `pool` most cosine-similar to `query`, most similar first
  (ties: lower index first)."""
  scores = normalize(pool) @ normalize(query)
  return np.argsort(-scores, kind='stable')[:k]


# ------------------------------------------------------------------------------------------------
# Computing the fields: fn(lm, prompter, examples, options, seed) -> array, one row per example.
# `options` is the fewshot config (a mapping: read with .get and a default).


def _inputs(prompter, examples):
  """(ids, weights) of each bare input: what embeddings and gradients see (not the label)."""
  return [prompter.input_ids(e['text']) for e in examples]


def embeddings(lm, prompter, examples, options, seed):
  del options, seed
  return lm.embed([s for s, _ in _inputs(prompter, examples)])


def demo_losses(lm, prompter, examples, options, seed):
  """The LM's mean token loss on each formatted demonstration, label included."""
  del options, seed
  return lm.mean_loss([prompter.demo_ids(e['text'], e['label']) for e in examples])


def gradients(lm, prompter, examples, options, seed):
  ins = _inputs(prompter, examples)
  return lm.gradients(
    [s for s, _ in ins],
    [w for _, w in ins],
    which=options.get('gradient_params', 'last'),
    dim=int(options.get('gradient_dim', 0)),
    seed=seed,
  )


# Field -> (which examples it is over, how). No query_loss: it would score the test label.
COMPUTE = {
  'pool_emb': ('pool', embeddings),
  'query_emb': ('query', embeddings),
  'pool_loss': ('pool', demo_losses),
  'pool_grad': ('pool', gradients),
  'query_grad': ('query', gradients),
}


def compute(
  lm,
  prompter,
  pool: Sequence[dict],
  queries: Sequence[dict],
  fields: Sequence[str],
  options=None,
  seed: int = 0,
) -> Features:
  """`Features` with `fields` filled (in `COMPUTE` order), the rest None."""
  unknown = set(fields) - set(COMPUTE)
  if unknown:
    raise ValueError(f'unknown features {sorted(unknown)}: known are {tuple(COMPUTE)}.')
  f = Features(num_pool=len(pool))
  for name, (side, fn) in COMPUTE.items():
    if name in fields:
      setattr(f, name, fn(lm, prompter, pool if side == 'pool' else queries, options or {}, seed))
  return f
