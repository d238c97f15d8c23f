"""The fused kernels of lm.models.kernels ('splash', 'flash'), run in Pallas's interpret mode on
CPU, equal a plain softmax attention written here (outputs and gradients w.r.t. q, k, v, float32,
within 1e-5) with causal masks, packed segment ids, padding, and grouped-query heads."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import models as M
from lm.models import kernels

B, T, DH = 3, 12, 16  # T = 12 is no multiple of either kernel's block: the kernels pad
PACKED = [[1] * 5 + [2] * 7, [1] * 12, [1] * 8 + [2] * 3 + [0]]
PADDED = [[1] * 12, [1] * 9 + [0] * 3, [1] * 7 + [0] * 5]
# case: (causal, segment ids, query heads, kv heads)
CASES = {
  'causal': (True, None, 4, 4),
  'causal_packed_gqa': (True, PACKED, 4, 2),
  'padding_mqa': (False, PADDED, 4, 1),
}


def _reference(q, k, v, segment_ids, causal):
  """softmax(q k^T / sqrt(Dh)) v over a dense [B, H, T, T] mask; kv head of query head i:
  i // (H / KV)."""
  h, kv = q.shape[2], k.shape[2]
  k, v = jnp.repeat(k, h // kv, axis=2), jnp.repeat(v, h // kv, axis=2)
  scores = jnp.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
  mask = jnp.ones((q.shape[0], 1, T, T), bool)
  if segment_ids is not None:
    mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
  if causal:
    mask = mask & jnp.tril(jnp.ones((T, T), bool))
  probs = jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), axis=-1)
  return jnp.einsum('bhqk,bkhd->bqhd', probs, v)


def _out_and_grads(fn, q, k, v, cotangent):
  out, vjp = jax.vjp(fn, q, k, v)
  return (out, *vjp(cotangent))


# Interpret mode is slow: the fast tier keeps one kernel on the hardest case; the rest run slow.
SLOW = pytest.mark.slow


@pytest.mark.parametrize(
  'impl,case',
  [
    ('flash', 'causal_packed_gqa'),
    *(
      pytest.param(i, c, marks=SLOW)
      for i in kernels.IMPLS
      for c in CASES
      if (i, c) != ('flash', 'causal_packed_gqa')
    ),
  ],
)
def test_kernel_equals_einsum(impl, case):
  causal, segments, h, kv = CASES[case]
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.standard_normal((B, T, h, DH)), jnp.float32)
  k, v = (jnp.asarray(rng.standard_normal((B, T, kv, DH)), jnp.float32) for _ in range(2))
  segment_ids = None if segments is None else jnp.asarray(segments, jnp.int32)
  # Padding queries (segment 0 in PADDED) are compared nowhere: their outputs get no cotangent.
  real = np.ones((B, T), bool) if case != 'padding_mqa' else np.asarray(PADDED) != 0
  cotangent = jnp.asarray(rng.standard_normal((B, T, h, DH)) * real[:, :, None, None], jnp.float32)

  fused = lambda q, k, v: kernels.fused_attention(
    impl, q, k, v, causal=causal, segment_ids=segment_ids, interpret=True
  )
  ref = lambda q, k, v: _reference(q, k, v, segment_ids, causal)
  got = jax.jit(_out_and_grads, static_argnums=0)(fused, q, k, v, cotangent)
  want = _out_and_grads(ref, q, k, v, cotangent)
  for name, a, b in zip(('out', 'dq', 'dk', 'dv'), got, want):
    a, b = np.asarray(a), np.asarray(b)
    if name == 'out':
      a, b = a[real], b[real]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()), err_msg=name)


@SLOW
@pytest.mark.parametrize('impl', kernels.IMPLS)
def test_kernel_bfloat16_and_scale(impl):
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.standard_normal((1, T, 2, DH)), jnp.float32) for _ in range(3))
  segment_ids = jnp.asarray(PACKED[:1], jnp.int32)
  bf = lambda x: x.astype(jnp.bfloat16)
  out = kernels.fused_attention(
    impl, bf(q), bf(k), bf(v), causal=True, segment_ids=segment_ids, scale=0.5 / np.sqrt(DH)
  )
  assert out.dtype == jnp.bfloat16 and out.shape == q.shape
  want = _reference(q * 0.5, k, v, segment_ids, True)  # the scale on q is the scale on scores
  np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=0.05)


def test_kernel_errors():
  q = jnp.zeros((1, 8, 2, DH))
  with pytest.raises(ValueError, match='not one of'):
    kernels.fused_attention('cudnn', q, q, q, causal=True)
  with pytest.raises(ValueError, match='Tq == Tk'):
    kernels.fused_attention('splash', q, q[:, :4], q[:, :4], causal=True)
  with pytest.raises(ValueError, match='must divide'):
    kernels.fused_attention(
      'splash', q, q[:, :, :1].repeat(3, 2), q[:, :, :1].repeat(3, 2), causal=True
    )
  ids = jnp.ones((1, 8), jnp.int32)
  with pytest.raises(ValueError, match='one set of segment ids'):
    kernels.fused_attention('flash', q, q, q, causal=True, segment_ids=ids, kv_segment_ids=ids + 0)


@SLOW
@pytest.mark.parametrize('impl', kernels.IMPLS)
def test_decoder_with_a_kernel_equals_einsum(impl):
  """Through the model: `attention_impl` picks the kernel, and padding + packed documents reach
  it as ids (`Mask.ids_of`); the logits of real tokens equal the einsum path's."""
  cfg = M.ModelConfig(
    vocab_size=64,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    mlp_dim=64,
    max_len=T,
    type_vocab_size=0,
    pre_ln=True,
    position='rope',
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
  )
  ids = jnp.asarray(np.random.default_rng(2).integers(0, 64, (B, T)), jnp.int32)
  kwargs = dict(segment_ids=jnp.asarray(PACKED), attention_mask=jnp.asarray(PADDED) != 0)
  params = M.Decoder(cfg).init(jax.random.PRNGKey(0), ids)['params']
  logits = lambda impl: M.Decoder(dataclasses.replace(cfg, attention_impl=impl)).apply(  # noqa: E731
    {'params': params}, ids, **kwargs
  )
  real = np.asarray(PADDED) != 0
  want, got = np.asarray(logits('einsum'))[real], np.asarray(logits(impl))[real]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
