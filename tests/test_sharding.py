"""Sharded forward passes equal the single-device one, and params sit where RULES say."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lm import models as M  # noqa: E402
from lm import sharding  # noqa: E402

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason='needs 8 (simulated) devices')

TINY = dict(
  vocab_size=128,
  hidden_size=32,
  num_layers=2,
  num_heads=4,
  mlp_dim=64,
  max_len=16,
  dropout_rate=0.0,
  attention_dropout_rate=0.0,
)


LLAMA = dict(  # grouped-query attention, RoPE, RMSNorm, SwiGLU, untied head
  pre_ln=True,
  type_vocab_size=0,
  position='rope',
  norm='rmsnorm',
  mlp='swiglu',
  num_kv_heads=2,
  bias='none',
  tie_embeddings=False,
)


def _model(kind, **kw):
  extra = {'encoder': {}, 'decoder': dict(pre_ln=True), 'llama': LLAMA}[kind]
  cfg = M.ModelConfig(**TINY, **extra, **kw)
  return M.Encoder(cfg) if kind == 'encoder' else M.Decoder(cfg)


def _batch():
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 128, (8, 16)).astype(np.int32)
  mask = np.ones((8, 16), np.int32)
  mask[1, 10:] = 0
  return ids, mask


# The fast tier keeps one case of each test (the 3-axis mesh, the decoder); each further case is
# a 10-25 s XLA CPU compile of a partitioned program, so it runs with the slow tier. Pure data
# parallelism (8, 1, 1) is left to the end-to-end runs (test_scale, test_harness, test_icl).
SLOW = pytest.mark.slow


@pytest.mark.parametrize(
  'kind,scan,mesh_shape',
  [
    pytest.param('decoder', True, (2, 2, 2), marks=SLOW),
    pytest.param('encoder', False, (2, 2, 2), marks=SLOW),
    pytest.param('llama', True, (2, 2, 2), marks=SLOW),
    pytest.param('llama', True, (2, 4, 1), marks=SLOW),
    # a context axis: sequence-sharded activations, ring attention, the state over fsdp x context
    pytest.param('llama', True, (1, 1, 2, 4), marks=SLOW),
  ],
)
def test_sharded_forward_matches_single_device(kind, scan, mesh_shape):
  model = _model(kind, scan_layers=scan, lora_rank=4 if kind == 'decoder' else 0)
  ids, mask = _batch()
  apply = lambda v, i, m: jax.tree.leaves(model.apply(v, i, attention_mask=m))

  init = lambda: model.init(jax.random.PRNGKey(0), jnp.asarray(ids))
  ref_vars = nn.unbox(init())
  with jax.default_device(jax.devices()[0]):
    ref = apply(ref_vars, ids, mask)

  mesh = sharding.make_mesh(mesh_shape)
  variables, shardings = sharding.init_sharded(init, mesh)
  batch = sharding.shard_batch((ids, mask), mesh)
  with sharding.use(mesh):
    out = jax.jit(apply)(variables, *batch)
  for r, o in zip(ref, out):
    np.testing.assert_allclose(np.asarray(o), np.asarray(r), rtol=1e-5, atol=1e-5)

  # Params are laid out as the rules say: embed dim on fsdp, heads/mlp/vocab on tensor.
  params = variables['params']
  layer = params['stack']['layers'] if scan else params['stack']['layers_0']
  data, fsdp, tensor, context = (*mesh_shape, 1)[:4]
  fsdp *= context  # the state's `embed` axis shards over fsdp x context
  q = layer['attention']['query']['kernel']  # ([layers], embed, heads * head_dim)
  assert q.addressable_shards[0].data.shape[-2:] == (32 // fsdp, 32 // tensor)
  if scan:
    assert q.addressable_shards[0].data.shape[0] == 2  # the layers axis is never split
  emb = params['embed']['token']['embedding']
  assert emb.addressable_shards[0].data.shape == (128 // tensor, 32 // fsdp)
  if kind == 'decoder':  # LoRA adapters split like the kernel they adapt
    a, b = layer['attention']['query']['lora_a'], layer['attention']['query']['lora_b']
    assert a.addressable_shards[0].data.shape[-2:] == (32 // fsdp, 4)
    assert b.addressable_shards[0].data.shape[-2:] == (4, 32 // tensor)
  k = layer['attention']['key']['kernel']  # (embed, kv_heads * head_dim): 2 heads of 8
  assert k.addressable_shards[0].data.shape[-2:] == (32 // fsdp, 8 * model.cfg.kv_heads // tensor)
  if kind == 'llama':
    head = params['lm_head']['kernel']
    assert head.addressable_shards[0].data.shape == (32 // fsdp, 128 // tensor)
  wi = layer['mlp']['wi']['kernel']
  assert wi.addressable_shards[0].data.shape[-2:] == (32 // fsdp, 64 // tensor)
  # Variables keep their sharding specs.
  assert jax.tree.structure(shardings) == jax.tree.structure(variables)


@pytest.mark.parametrize(
  'kind,mesh_shape',
  [
    pytest.param('encoder', (2, 2, 2), marks=SLOW),
    ('decoder', (2, 2, 2)),
    *(pytest.param('llama', m, marks=SLOW) for m in [(2, 4, 1), (2, 2, 2)]),
  ],
)
def test_sharded_gradients_match_single_device(kind, mesh_shape):
  """Gradients too: XLA's CPU partitioner once produced wrong ones on (2, 2, 2) only."""
  model = _model(kind)
  ids, mask = _batch()
  pos = np.random.default_rng(1).integers(0, 16, (8, 3)).astype(np.int32)

  def loss(params, ids, mask, pos):
    if kind == 'encoder':
      out = model.apply({'params': params}, ids, None, mask, pos)
      return jnp.sum(jax.nn.log_softmax(out['mlm_logits'])[..., 7]) + jnp.sum(
        out['nsp_logits'][:, 0]
      )
    return jnp.sum(
      jax.nn.log_softmax(model.apply({'params': params}, ids, attention_mask=mask))[..., 3]
    )

  init = lambda: model.init(jax.random.PRNGKey(0), jnp.asarray(ids))
  ref = jax.grad(loss)(nn.unbox(init())['params'], ids, mask, pos)
  mesh = sharding.make_mesh(mesh_shape)
  variables, _ = sharding.init_sharded(init, mesh)
  with sharding.use(mesh):
    got = jax.jit(jax.grad(loss))(
      variables['params'], *sharding.shard_batch((ids, mask, pos), mesh)
    )
  for (path, r), g in zip(jax.tree_util.tree_flatten_with_path(ref)[0], jax.tree.leaves(got)):
    scale = max(1.0, float(np.abs(r).max()))
    np.testing.assert_allclose(
      np.asarray(g), r, rtol=1e-4, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path)
    )


def test_evaluation_mesh_falls_back_to_data_parallel(capsys):
  """eval.py shards as the job's config says, and a mesh this machine cannot hold (a job from a
  pod slice, evaluated here) becomes all devices data-parallel, said once, not an error."""
  import ml_collections  # noqa: PLC0415

  mesh = lambda **kw: dict(sharding.config_mesh(ml_collections.ConfigDict(kw)).shape)  # noqa: E731
  assert mesh(mesh_shape=(2, 2, 2), num_devices=0) == {
    'data': 2,
    'fsdp': 2,
    'tensor': 2,
    'context': 1,
  }
  assert mesh(mesh_shape=(1, 1, 1), num_devices=1) == {
    'data': 1,
    'fsdp': 1,
    'tensor': 1,
    'context': 1,
  }
  assert capsys.readouterr().out == ''
  assert mesh(mesh_shape=(4, 4, 1), num_devices=0) == {
    'data': 8,
    'fsdp': 1,
    'tensor': 1,
    'context': 1,
  }
  assert 'mesh (4, 4, 1) needs 16 devices, have 8; using all 8' in capsys.readouterr().out
  assert mesh(mesh_shape=(-1, 1, 1), num_devices=64) == {
    'data': 8,
    'fsdp': 1,
    'tensor': 1,
    'context': 1,
  }
  assert 'the job ran on 64 devices' in capsys.readouterr().out
