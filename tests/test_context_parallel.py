"""Context parallelism: attention over a sequence sharded on the `context` mesh axis (ring and
all-gather schedules) equals one device's attention, outputs and gradients, and train.py on a
mesh with a context axis follows the 1-device loss curve and resumes bit for bit after kill -9.

The reference is the einsum path of `dot_product_attention` on one device, with the dense mask
`Mask.dense` builds; only real (unpadded) query rows carry a cotangent, as in training."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conftest
from conftest import run_killed_and_resumed, run_script
from lm import sharding
from lm.models import layers
from lm.models.config import ModelConfig

B, T, H, KV, D = 2, 32, 4, 2, 8
SEGMENTS = np.array([[1] * 5 + [2] * 19 + [3] * 8, [1] * 27 + [0] * 5], np.int32)
PADDING = np.array([[1] * 32, [1] * 27 + [0] * 5], np.int32)
CASES = {  # name: (causal, mask, window, bias)
  'causal+segments+padding': (True, layers.Mask(PADDING, SEGMENTS), 0, False),
  'padding': (False, layers.Mask(PADDING), 0, False),
  'causal+window': (True, None, 6, False),
  'bias+padding': (False, layers.Mask(PADDING), 0, True),  # T5's relative-position bias
}


def _inputs():
  rng = np.random.default_rng(0)
  normal = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)  # noqa: E731
  return normal(B, T, H, D), normal(B, T, KV, D), normal(B, T, KV, D), normal(1, H, T, T)


def _out_and_grads(cfg, case):
  causal, mask, window, with_bias = CASES[case]
  q, k, v, bias = _inputs()
  weight = jnp.asarray(PADDING if mask is not None else np.ones((B, T)), jnp.float32)
  probe = jnp.cos(jnp.arange(H * D, dtype=jnp.float32)).reshape(H, D)

  def loss(q, k, v, bias):
    out = layers.dot_product_attention(
      q, k, v, mask, cfg, causal=causal, window=window, bias=bias if with_bias else None
    )
    return jnp.sum(out * probe * weight[:, :, None, None]), out

  grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)
  (_, out), grads = jax.jit(grad)(q, k, v, bias)
  return out, grads


MAIN = 'causal+segments+padding'


# Every axis size on the main case (the acceptance's: causal masks and packed segments), the
# other masks on 4; the fast tier keeps 4 on the main case.
@pytest.mark.parametrize(
  'schedule,n,case',
  [
    ('ring', 4, MAIN),
    ('allgather', 4, MAIN),
    *(
      pytest.param(s, n, c, marks=pytest.mark.slow)
      for s in ('ring', 'allgather')
      for n, c in [(2, MAIN), (8, MAIN), *((4, c) for c in CASES if c != MAIN)]
    ),
  ],
)
def test_context_attention_equals_one_device(schedule, n, case):
  cfg = ModelConfig(num_heads=H, num_kv_heads=KV, hidden_size=H * D)
  with jax.default_device(jax.devices()[0]):
    ref_out, ref_grads = _out_and_grads(cfg, case)
  mesh = sharding.make_mesh((1, 1, 1, n), jax.devices()[:n])
  with sharding.use(mesh):
    out, grads = _out_and_grads(dataclasses.replace(cfg, context_parallel=schedule), case)
  real = PADDING.astype(bool) if CASES[case][1] is not None else np.ones((B, T), bool)
  scale = float(np.abs(ref_out).max())
  np.testing.assert_allclose(np.asarray(out)[real], np.asarray(ref_out)[real], atol=1e-5 * scale)
  for name, g, r in zip('qkvb', grads, ref_grads):
    r = np.asarray(r)
    np.testing.assert_allclose(
      np.asarray(g), r, atol=1e-5 * max(1.0, float(np.abs(r).max())), err_msg=name
    )


def test_context_axis_shards_activations_and_checks_lengths():
  """The sequence axis of activations is sharded over `context`; a length the axis does not
  divide is a one-line error naming the fix."""
  mesh = sharding.make_mesh((1, 1, 1, 4), jax.devices()[:4])
  assert dict(mesh.shape) == {'data': 1, 'fsdp': 1, 'tensor': 1, 'context': 4}
  cfg = ModelConfig(num_heads=H, num_kv_heads=KV, hidden_size=H * D)
  q, k, v, _ = _inputs()
  with sharding.use(mesh):
    x = jax.jit(lambda x: layers.constrain(x, *layers.ACT_HEADS))(q)
    assert x.sharding.shard_shape(x.shape) == (B, T // 4, H, D)
    with pytest.raises(ValueError, match=r'set data.seq_len .* to a multiple of 4'):
      jax.jit(lambda q, k, v: layers.dot_product_attention(q, k, v, None, cfg, causal=True))(
        q[:, :30], k[:, :30], v[:, :30]
      )


def _losses(workdir):
  rows = [json.loads(line) for line in open(workdir / 'metrics.jsonl', encoding='utf-8')]
  return {r['step']: r['train/loss'] for r in rows if 'train/loss' in r}


@pytest.mark.slow
def test_train_on_a_context_mesh_follows_one_device_and_resumes_exactly(tmp_path):
  """GPT causal LM with packed documents and grouped-query heads: (data, fsdp, tensor, context)
  = (1, 2, 1, 4) on 8 devices follows the 1-device loss curve within 1e-5 (relative) for 24
  steps, and a kill -9 + resume on that mesh reproduces its uninterrupted run bit for bit."""
  args = [
    '--config=configs/gpt_base.py',
    *conftest.TINY,
    '--config.model.num_heads=4',
    '--config.model.num_kv_heads=2',
    '--config.data.max_documents=400',
    '--config.train.steps=24',
    '--config.train.warmup_steps=5',
    '--config.log_every=1',
    '--config.eval_every=24',
    '--config.eval_batches=2',
    '--config.checkpoint_every=8',
    '--config.sample_tokens=8',
  ]
  context = [*args, '--config.mesh_shape=(1,2,1,4)']
  run_script('train.py', *args, f'--workdir={tmp_path / "one"}', '--config.mesh_shape=(1,1,1)')
  out = run_script('train.py', *context, f'--workdir={tmp_path / "ctx"}', devices=8).stdout
  assert "'context': 4" in out and '[sample' in out  # decoding runs unsharded on it
  one, ctx = _losses(tmp_path / 'one'), _losses(tmp_path / 'ctx')
  assert sorted(one) == sorted(ctx) == list(range(1, 25))
  a, b = (np.array([d[s] for s in sorted(d)]) for d in (one, ctx))
  print('max relative loss difference', np.max(np.abs(a - b) / a))
  np.testing.assert_allclose(b, a, rtol=1e-5)
  assert a[-1] < a[0] - 0.1  # it learned something (6.24 -> 6.04 at step 24)

  kill_at, out = run_killed_and_resumed(
    'train.py', context, tmp_path / 'resumed', (17, 23), tmp_path / 'killed.log', devices=8
  )
  print(f'killed at step >= {kill_at}')
  assert _losses(tmp_path / 'resumed')[24] == ctx[24]
  from lm import pretrained  # noqa: PLC0415

  straight, resumed = (pretrained.load(str(tmp_path / w)).params for w in ('ctx', 'resumed'))
  for x, y in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    assert np.array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
@pytest.mark.parametrize('family', ['t5'])
def test_every_family_runs_on_a_context_axis(family):
  """T5 (relative-position bias, causal decoder, cross attention to the sequence-sharded
  encoder) on a context axis of 4 gives one device's outputs ('bert' runs the same check on the
  encoder; left out of the suite for time, bidirectional attention with padding is the 'padding'
  case above); the decoder families are covered above and in test_sharding (Llama, (1,1,2,4))."""
  import flax.linen as nn  # noqa: PLC0415

  from lm import models as M  # noqa: PLC0415

  small = dict(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64)
  small.update(dropout_rate=0.0, attention_dropout_rate=0.0)
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 128, (4, 16)).astype(np.int32)
  targets = rng.integers(0, 128, (4, 8)).astype(np.int32)
  padding = np.ones((4, 16), np.int32)
  padding[1, 12:] = 0
  if family == 't5':
    model = M.T5(M.T5Config(**small, num_decoder_layers=2, d_kv=8, relative_buckets=8))
    init = lambda: model.init(jax.random.PRNGKey(0), jnp.asarray(ids), jnp.asarray(targets))  # noqa: E731
    fn = lambda v, i, m: model.apply(v, i, targets, attention_mask=m)  # noqa: E731
  else:
    model = M.Encoder(M.ModelConfig(**small, max_len=16))
    init = lambda: model.init(jax.random.PRNGKey(0), jnp.asarray(ids))  # noqa: E731
    fn = lambda v, i, m: model.apply(v, i, None, m)['mlm_logits']  # noqa: E731
  ref = fn(nn.unbox(init()), ids, padding)
  mesh = sharding.make_mesh((1, 1, 1, 4), jax.devices()[:4])
  variables, _ = sharding.init_sharded(init, mesh)
  with sharding.use(mesh):
    out = jax.jit(fn)(variables, ids, padding)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5 * float(np.abs(ref).max()))
