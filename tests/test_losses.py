"""Cross-entropy sums against a float64 numpy reference, and the fused chunked linear + CE
(custom VJP) against plain autodiff through full logits: values and all three gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import losses


def _numpy_ce(logits, labels, weights):
  z = logits.astype(np.float64)
  logp = z - z.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
  correct = (z.argmax(-1) == labels).astype(np.float64)
  return (nll * weights).sum(), (correct * weights).sum()


def test_cross_entropy_sums_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (4, 7, 50)).astype(np.float32)
  labels = rng.integers(0, 50, (4, 7))
  labels[0, :3] = logits[0, :3].argmax(-1)  # some correct predictions
  weights = rng.integers(0, 2, (4, 7)).astype(np.float32)
  weights[0, :3] = 1
  nll, correct = losses.cross_entropy_sums(
    jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights)
  )
  ref_nll, ref_correct = _numpy_ce(logits, labels, weights)
  np.testing.assert_allclose(float(nll), ref_nll, rtol=1e-5)
  assert float(correct) == ref_correct and ref_correct >= 3


@pytest.mark.parametrize('chunk', [4, 5, 64])  # divides N; leaves a padded tail; one chunk
def test_chunked_cross_entropy_equals_full_logits(chunk):
  rng = np.random.default_rng(1)
  b, t, d, v = 3, 8, 16, 40
  hidden = jnp.asarray(rng.normal(0, 1, (b, t, d)), jnp.float32)
  emb = jnp.asarray(rng.normal(0, 0.5, (v, d)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, v, (b, t)), jnp.int32)
  weights = jnp.asarray(rng.integers(0, 2, (b, t)), jnp.float32)

  def full(h, e, w):
    nll, correct = losses.cross_entropy_sums(jnp.einsum('btd,vd->btv', h, e), labels, w)
    return 2.5 * nll + jax.lax.stop_gradient(correct), (nll, correct)

  def fused(h, e, w):
    nll, correct = losses.chunked_cross_entropy_sums(h, e, labels, w, chunk)
    return 2.5 * nll + jax.lax.stop_gradient(correct), (nll, correct)

  (_, ref), ref_g = jax.value_and_grad(full, argnums=(0, 1, 2), has_aux=True)(hidden, emb, weights)
  (_, out), out_g = jax.jit(jax.value_and_grad(fused, argnums=(0, 1, 2), has_aux=True))(
    hidden, emb, weights
  )
  np.testing.assert_allclose(out[0], ref[0], rtol=1e-5)
  assert float(out[1]) == float(ref[1])
  for name, g, r in zip(('hidden', 'embedding', 'weights'), out_g, ref_g):
    np.testing.assert_allclose(
      g, r, rtol=1e-4, atol=1e-5 * float(jnp.abs(r).max()), err_msg=f'd loss / d {name}'
    )
