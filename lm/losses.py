"""Weighted cross-entropy sums. Sums, not means, so gradient accumulation over
micro-batches divides once by the whole batch's weight and equals one big batch."""
import jax
import jax.numpy as jnp


def cross_entropy_sums(logits, labels, weights):
  """(sum of weighted -log p(label), sum of weighted correct argmax) over all positions."""
  logits = logits.astype(jnp.float32)
  logp = jax.nn.log_softmax(logits)
  nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return jnp.sum(nll * weights), jnp.sum(correct * weights)


def chunked_cross_entropy_sums(hidden, embedding, labels, weights, chunk_size: int):
  """Tied-output cross-entropy computed `chunk_size` tokens at a time.

  hidden [N..., D] is projected onto embedding [V, D] per chunk and the chunk's logits are
  recomputed in the backward pass (jax.checkpoint), so the [N, V] logits never exist in full:
  with V in the tens of thousands they are the largest tensor in the step.
  """
  d = hidden.shape[-1]
  h, y, w = hidden.reshape(-1, d), labels.reshape(-1), weights.reshape(-1).astype(jnp.float32)
  n = h.shape[0]
  pad = (-n) % chunk_size
  if pad:
    h, y, w = jnp.pad(h, ((0, pad), (0, 0))), jnp.pad(y, (0, pad)), jnp.pad(w, (0, pad))
  chunks = (h.reshape(-1, chunk_size, d), y.reshape(-1, chunk_size), w.reshape(-1, chunk_size))

  @jax.checkpoint
  def one(args):
    hc, yc, wc = args
    logits = jnp.einsum('nd,vd->nv', hc, embedding.astype(hc.dtype)).astype(jnp.float32)
    return cross_entropy_sums(logits, yc, wc)

  nll, correct = jax.lax.map(one, chunks)
  return jnp.sum(nll), jnp.sum(correct)
