"""The fused attention path (`jax.nn.dot_product_attention`, causality as `is_causal`) equals
the einsum path, and the decoder is causal and never attends across packed documents."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import models as M

CFG = M.ModelConfig(
  vocab_size=64,
  hidden_size=32,
  num_layers=2,
  num_heads=4,
  mlp_dim=64,
  max_len=16,
  dropout_rate=0.0,
  attention_dropout_rate=0.0,
)
B, T = 3, 12


def _inputs():
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(0, CFG.vocab_size, (B, T)), jnp.int32)
  segments = jnp.asarray([[1] * 5 + [2] * 7, [1] * 12, [1] * 8 + [2] * 3 + [0]], jnp.int32)
  padding = jnp.asarray([[1] * T, [1] * 9 + [0] * 3, [1] * T], jnp.int32)
  return ids, segments, padding


def _logits(cls, impl, fn):
  cfg = dataclasses.replace(
    CFG, attention_impl=impl, **({'pre_ln': True, 'type_vocab_size': 0} if cls is M.Decoder else {})
  )
  model = cls(cfg)
  ids = _inputs()[0]
  params = model.init(jax.random.PRNGKey(0), ids)['params']
  return fn(model, params)


@pytest.mark.parametrize('impl', ['xla', 'auto'])
@pytest.mark.parametrize('case', ['causal', 'segments', 'padding'])
def test_decoder_fused_equals_einsum(impl, case):
  ids, segments, padding = _inputs()
  kwargs = {
    'causal': {},
    'segments': {'segment_ids': segments},
    'padding': {'attention_mask': padding},
  }[case]
  fn = lambda m, p: m.apply({'params': p}, ids, **kwargs)
  ref, out = _logits(M.Decoder, 'einsum', fn), _logits(M.Decoder, impl, fn)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * float(jnp.abs(ref).max()))


def test_encoder_fused_equals_einsum():
  ids, _, padding = _inputs()
  fn = lambda m, p: m.apply({'params': p}, ids, None, padding)['mlm_logits']
  ref, out = _logits(M.Encoder, 'einsum', fn), _logits(M.Encoder, 'xla', fn)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * float(jnp.abs(ref).max()))


@pytest.mark.parametrize('impl', ['einsum', 'xla'])
def test_decoder_is_causal_and_document_local(impl):
  ids, segments, _ = _inputs()
  changed = ids.at[:, 2].set((ids[:, 2] + 1) % CFG.vocab_size)  # in row 0's first document

  def fn(m, p):
    return (
      m.apply({'params': p}, ids, segment_ids=segments),
      m.apply({'params': p}, changed, segment_ids=segments),
    )

  a, b = _logits(M.Decoder, impl, fn)
  diff = np.abs(np.asarray(a) - np.asarray(b)).max(-1)  # [B, T]
  assert diff[:, :2].max() == 0.0  # the past never sees the future
  assert diff[0, 2:5].min() > 0 and diff[1, 2:].min() > 0  # the same document does
  assert diff[0, 5:].max() == 0.0  # row 0's second document never sees its first
