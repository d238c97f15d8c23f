"""Weighted cross-entropy sums. Sums, not means, so gradient accumulation over
micro-batches divides once by the whole batch's weight and equals one big batch."""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def cross_entropy_sums(logits, labels, weights):
  """(sum of weighted -log p(label), sum of weighted correct) over all positions.

  -log p = logsumexp - label logit: no [N, V] log-probabilities are materialised and the
  gradient is one fused softmax - onehot pass (the logits are the step's largest tensor).
  `correct` counts a token when its label's logit attains the row max (argmax up to exact ties).
  """
  logits = logits.astype(jnp.float32)
  label_logit = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  nll = jax.nn.logsumexp(logits, axis=-1) - label_logit
  correct = (label_logit >= jnp.max(jax.lax.stop_gradient(logits), -1)).astype(jnp.float32)
  return jnp.sum(nll * weights), jnp.sum(correct * weights)


def _chunked(hidden, labels, weights, chunk_size: int):
  """Flattens to [N, D] / [N], pads N to a multiple of chunk_size, splits into chunks."""
  d = hidden.shape[-1]
  h, y, w = hidden.reshape(-1, d), labels.reshape(-1), weights.reshape(-1).astype(jnp.float32)
  n = h.shape[0]
  pad = (-n) % chunk_size
  if pad:
    h, y, w = jnp.pad(h, ((0, pad), (0, 0))), jnp.pad(y, (0, pad)), jnp.pad(w, (0, pad))
  return n, (h.reshape(-1, chunk_size, d), y.reshape(-1, chunk_size), w.reshape(-1, chunk_size))


def _chunk_terms(hc, yc, embedding):
  """One chunk's logits [n, V] (f32), their max, exp(logits - max) and its row sums, and the
  per-token nll and correct (label logit attains the row max: argmax up to exact ties)."""
  logits = jnp.einsum('nd,vd->nv', hc, embedding.astype(hc.dtype)).astype(jnp.float32)
  m = jnp.max(logits, -1, keepdims=True)
  e = jnp.exp(logits - m)
  s = jnp.sum(e, -1, keepdims=True)
  label_logit = jnp.take_along_axis(logits, yc[:, None], -1)
  nll = (jnp.log(s) + m - label_logit)[:, 0]
  correct = (label_logit >= m)[:, 0].astype(jnp.float32)
  return e, s, nll, correct


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def chunked_cross_entropy_sums(hidden, embedding, labels, weights, chunk_size: int):
  """Tied-output cross-entropy computed `chunk_size` tokens at a time (fused linear + CE).

  hidden [N..., D] is projected onto embedding [V, D] per chunk, so the [N, V] logits never
  exist in full: with V in the tens of thousands they are the largest tensor in the step.
  Under differentiation each chunk also computes its gradients right away (d logits =
  w * (softmax - onehot), then d hidden and the accumulated d embedding), and the backward
  pass only scales them by the incoming cotangent: the projection is computed once
  (6*N*D*V FLOPs in all, no recompute) and each [chunk, V] tile is swept a few times only.
  `correct` counts a token when its label's logit equals the row max (argmax up to exact
  ties); it carries no gradient.
  """
  _, chunks = _chunked(hidden, labels, weights, chunk_size)

  def one(args):
    hc, yc, wc = args
    _, _, nll, correct = _chunk_terms(hc, yc, embedding)
    return jnp.sum(nll * wc), jnp.sum(correct * wc)

  nll, correct = jax.lax.map(one, chunks)
  return jnp.sum(nll), jnp.sum(correct)


def _chunked_ce_fwd(hidden, embedding, labels, weights, chunk_size):
  n, chunks = _chunked(hidden, labels, weights, chunk_size)
  dtype = hidden.dtype
  emb = embedding.astype(dtype)

  def body(d_emb, args):
    hc, yc, wc = args
    e, s, nll, correct = _chunk_terms(hc, yc, embedding)
    p = e / s
    onehot = jnp.arange(e.shape[-1])[None, :] == yc[:, None]
    d_logits = (jnp.where(onehot, p - 1.0, p) * wc[:, None]).astype(dtype)
    d_h = jnp.einsum('nv,vd->nd', d_logits, emb)
    d_emb = d_emb + jnp.einsum('nv,nd->vd', d_logits, hc, preferred_element_type=jnp.float32)
    return d_emb, (jnp.sum(nll * wc), jnp.sum(correct * wc), d_h, nll)

  d_emb, (nll, correct, d_h, tok_nll) = jax.lax.scan(
    body, jnp.zeros(embedding.shape, jnp.float32), chunks
  )
  d_h = d_h.reshape(-1, hidden.shape[-1])[:n].reshape(hidden.shape)
  tok_nll = tok_nll.reshape(-1)[:n].reshape(weights.shape)
  return (jnp.sum(nll), jnp.sum(correct)), (
    d_h,
    d_emb.astype(embedding.dtype),
    tok_nll,
    labels,
    weights,
  )


def _chunked_ce_bwd(chunk_size, res, g):
  del chunk_size
  d_h, d_emb, tok_nll, labels, weights = res
  g_nll = g[0]  # `correct` is piecewise constant: no gradient
  d_w = (
    (g_nll * tok_nll).astype(weights.dtype)
    if jnp.issubdtype(weights.dtype, jnp.inexact)
    else np.zeros(weights.shape, jax.dtypes.float0)
  )
  return (
    (g_nll * d_h).astype(d_h.dtype),
    (g_nll * d_emb).astype(d_emb.dtype),
    np.zeros(labels.shape, jax.dtypes.float0),
    d_w,
  )


chunked_cross_entropy_sums.defvjp(_chunked_ce_fwd, _chunked_ce_bwd)


def gather_logps(logits, tokens):
  """log softmax(logits)[token] in float32: [B, N, V], [B, N] -> [B, N]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]


def token_logps(logits, ids):
  """log p(ids[t] | ids[<t]) for t >= 1, at [B, T-1]: logits at t-1 predict token t."""
  return gather_logps(logits[:, :-1], ids[:, 1:])


def sequence_logps(model, params, ids, mask, resp, deterministic=True, rngs=None):
  """Sum of the response tokens' log-probs [B]; prompt and padding tokens do not count."""
  logits = model.apply(
    {'params': params}, ids, attention_mask=mask, deterministic=deterministic, rngs=rngs
  )
  return jnp.sum(token_logps(logits, ids) * resp[:, 1:].astype(jnp.float32), axis=-1)
