"""LoRA and QLoRA (lm/models/lora.py, lm/models/quant.py): each quantized format stays within
its stated error; a LoRA step trains only adapters and heads (the base is bit-identical and
AdamW's state holds only adapter- and head-sized arrays); full training keeps float32 master
params (bf16 params when asked, with float32 moments); a LoRA SFT run on a bf16 base killed with
-9 and resumed ends bit-identical to an uninterrupted one, and its bf16 export reloads in
transformers with our logits. PEFT parity is tests/test_peft.py; QLoRA SFT on the offline
default is test_sft.py's held-out loss test."""

import json

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from conftest import run_killed_and_resumed, run_script, tiny_gpt2_dir
from lm import defaults
from lm import models as M
from lm import optim
from lm import pretrained
from lm import sharding
from lm import trainer
from lm.models import lora
from lm.models import quant


def _weights():
  rng = np.random.default_rng(0)
  w = rng.standard_normal((256, 96)).astype(np.float32) * 0.02
  w[3, 5] = 0.5  # an outlier: only its own column (int8) or block (NF4) pays for it
  return w


def test_int8_error_is_at_most_half_a_step_of_its_column():
  w = _weights()
  codes, scale = quant.quantize(w, 'int8')
  assert codes.dtype == jnp.int8 and codes.shape == w.shape and scale.shape == (1, 96)
  np.testing.assert_allclose(scale[0], np.abs(w).max(axis=0) / 127, rtol=1e-6)
  err = np.abs(np.asarray(quant.dequantize(codes, scale, 'int8')) - w)
  assert np.all(err <= np.asarray(scale) / 2 * (1 + 1e-5))
  assert err[:, 5].max() > 5 * err[:, 6].max()  # the outlier's column is the coarse one


def test_nf4_matches_the_code_book_and_its_error_bound():
  """Each weight becomes the nearest of the 16 NF4 values times its block's absmax (computed
  here by brute force), two codes per byte; the error is within NF4_MAX_ERROR * absmax."""
  w = _weights()
  codes, absmax = quant.quantize(w, 'nf4')
  assert codes.dtype == jnp.uint8 and codes.shape == (128, 96) and absmax.shape == (4, 96)
  block_max = np.abs(w.reshape(4, 64, 96)).max(axis=1)
  np.testing.assert_allclose(absmax, block_max, rtol=1e-6)
  scale = np.repeat(block_max, 64, axis=0)
  nearest = np.argmin(np.abs((w / scale)[..., None] - quant.NF4), axis=-1)
  got = np.asarray(quant.dequantize(codes, absmax, 'nf4'))
  np.testing.assert_allclose(got, quant.NF4[nearest] * scale, rtol=1e-6, atol=1e-9)
  assert np.all(np.abs(got - w) <= quant.NF4_MAX_ERROR * scale * (1 + 1e-5))
  assert quant.NF4_MAX_ERROR == pytest.approx((1 - 0.6961928009986877) / 2)
  stacked = np.stack([w, -w])  # scanned layers: a leading axis, each layer on its own
  for fmt in quant.FORMATS[1:]:
    got = quant.dequantize(*quant.quantize(stacked, fmt), fmt)
    for i in range(2):
      want = quant.dequantize(*quant.quantize(stacked[i], fmt), fmt)
      np.testing.assert_array_equal(np.asarray(got[i]), np.asarray(want))
  with pytest.raises(ValueError, match="lora.quant='int8'"):
    quant.quantize(np.zeros((3, 4), np.float32), 'nf4')


def _flat(tree):
  return {'/'.join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree).items()}


@pytest.mark.parametrize('fmt', ['none', 'nf4'])
def test_a_lora_step_trains_only_adapters_and_the_head(fmt):
  """A reward model (a job-added head) on a LoRA decoder (QLoRA: scanned layers), three AdamW
  steps with weight decay:
  every base leaf (quantized or not) is bit-identical, every adapter and the head moved, the
  untargeted projections have no adapters, and the optimizer state holds two moments of each
  trainable leaf and nothing base-sized."""
  cfg = M.ModelConfig(
    vocab_size=64, hidden_size=32, num_heads=4, mlp_dim=64, max_len=16,
    type_vocab_size=0, pre_ln=True, dropout_rate=0.0, attention_dropout_rate=0.0,
    num_layers=2, scan_layers=fmt == 'nf4',  # QLoRA quantizes stacked (scanned) kernels too
  )  # fmt: skip
  ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (4, 8)), jnp.int32)
  base = nn.unbox(M.Decoder(cfg).init(jax.random.PRNGKey(1), ids)['params'])
  block = ml_collections.ConfigDict(dict(rank=4, alpha=8.0, dropout=0.1, targets='q,v,mlp_out'))
  block.quant = fmt
  model = M.RewardModel(lora.configure(cfg, block))
  config = defaults.preference()
  config.train.update(steps=3, warmup_steps=0, lr=1e-2, weight_decay=0.1)
  tx = optim.make(config.train)
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  state, state_sh = trainer.create_state_from(
    model, tx, mesh, 0, M.reward_init_inputs(8), base, 'decoder'
  )
  before = _flat(state.params)

  def loss_fn(params, batch, rng):
    score = model.apply({'params': params}, batch, deterministic=False, rngs={'dropout': rng})
    return jnp.mean((score - 1.0) ** 2), {}

  step = trainer.make_train_step(loss_fn, tx, state_sh, mesh, config)
  for _ in range(3):
    state, _ = step(state, sharding.shard_batch(np.asarray(ids), mesh))
  after = _flat(state.params)
  trained = {k for k in after if k.endswith(('lora_a', 'lora_b')) or k.startswith('head/')}
  assert {k.split('/')[-1] for k in trained} >= {'lora_a', 'lora_b', 'kernel', 'bias'}
  assert not any('/key/lora' in k or '/wi/lora' in k for k in after)  # untargeted
  for k in after:
    if k in trained:
      assert not np.array_equal(after[k], before[k]), k
    else:
      assert after[k].dtype == before[k].dtype and np.array_equal(after[k], before[k]), k
  base_flat = _flat({'decoder': base})
  if fmt == 'none':
    assert all(np.array_equal(after[k], v) for k, v in base_flat.items())
  else:
    assert after['decoder/stack/layers/attention/query/kernel'].shape == (2, 16, 32)
    assert after['decoder/stack/layers/attention/query/kernel'].dtype == np.uint8
  moments = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x)]
  assert sum(x.size for x in moments) == 2 * sum(after[k].size for k in trained)
  assert max(x.size for x in moments) == max(after[k].size for k in trained)


def test_widened_products_match_plain_autodiff():
  """lora.widened_dot (bf16 and NF4 kernels) and lora.widened_attend (a bf16 tied table) give the
  plain expressions' values and gradients: bit for bit for the dot, to float32 summation order
  for the attend, which sums its vocabulary blocks in another order."""
  import functools

  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 64))
  w = (jax.random.normal(jax.random.PRNGKey(1), (64, 96)) * 0.05).astype(jnp.bfloat16)
  plain = lambda x, w: jnp.sum(jnp.sin(x @ w.astype(jnp.float32)))  # noqa: E731
  wide = lambda x, w: jnp.sum(  # noqa: E731
    jnp.sin(lora.widened_dot(functools.partial(lora._cast, jnp.float32), x, w))
  )
  for a, b in zip(jax.grad(plain, (0, 1))(x, w), jax.grad(wide, (0, 1))(x, w)):
    assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
  codes, scale = quant.quantize(np.asarray(w, np.float32), 'nf4')
  plain_q = lambda x, s: jnp.sum(jnp.sin(x @ quant.dequantize(codes, s, 'nf4')))  # noqa: E731
  fmt = functools.partial(lora._dequantized, 'nf4', jnp.float32)
  wide_q = lambda x, s: jnp.sum(jnp.sin(lora.widened_dot(fmt, x, (codes, s))))  # noqa: E731
  for a, b in zip(jax.grad(plain_q, (0, 1))(x, scale), jax.grad(wide_q, (0, 1))(x, scale)):
    assert np.array_equal(np.asarray(a), np.asarray(b))
  table = w.T  # [V=96, D=64]: 16 blocks of 6 rows
  plain_t = lambda x, t: jnp.sum(jnp.sin(x @ t.astype(jnp.float32).T))  # noqa: E731
  wide_t = lambda x, t: jnp.sum(jnp.sin(lora.widened_attend(jnp.dtype(jnp.float32), x, t)))  # noqa: E731
  np.testing.assert_allclose(wide_t(x, table), plain_t(x, table), rtol=1e-6)
  (ax, at), (bx, bt) = jax.grad(plain_t, (0, 1))(x, table), jax.grad(wide_t, (0, 1))(x, table)
  np.testing.assert_allclose(np.asarray(bx), np.asarray(ax), rtol=1e-5, atol=1e-6)
  assert bt.dtype == at.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(bt, np.float32), np.asarray(at, np.float32), rtol=1e-2)


def test_full_training_keeps_float32_master_params_and_moments():
  """lora.configure's dtype rule: an explicit param_dtype wins; else LoRA keeps the base's dtype
  (frozen) and full training gets float32 params. With bfloat16 params (asked for), AdamW's
  moments are float32 and a step leaves the params bfloat16, moved."""
  cfg = M.ModelConfig(
    vocab_size=64, hidden_size=32, num_heads=4, mlp_dim=64, max_len=16, type_vocab_size=0,
    pre_ln=True, num_layers=1, param_dtype='bfloat16',
  )  # fmt: skip
  block = ml_collections.ConfigDict(dict(rank=4))
  assert lora.configure(cfg, None).param_dtype == 'float32'
  assert lora.configure(cfg, ml_collections.ConfigDict(dict(rank=0))).param_dtype == 'float32'
  assert lora.configure(cfg, block).param_dtype == 'bfloat16'
  assert lora.configure(cfg, block, 'float32').param_dtype == 'float32'
  model = M.Decoder(lora.configure(cfg, None, 'bfloat16'))
  config = defaults.preference()
  config.train.update(steps=1, warmup_steps=0, lr=1e-2)
  tx = optim.make(config.train)
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (4, 8)), jnp.int32)
  state, state_sh = trainer.create_state(model, tx, mesh, 0, (ids,))
  before = _flat(state.params)

  def loss_fn(params, batch, rng):
    logits = model.apply({'params': params}, batch)
    return jnp.mean(
      optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], batch[:, 1:])
    ), {}

  step = trainer.make_train_step(loss_fn, tx, state_sh, mesh, config)
  state, _ = step(state, sharding.shard_batch(np.asarray(ids), mesh))
  after = _flat(state.params)
  assert {v.dtype for v in after.values()} == {np.dtype(jnp.bfloat16)}
  assert all(not np.array_equal(after[k], before[k]) for k in after if k.endswith('kernel'))
  moments = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x)]
  assert len(moments) == 2 * len(after) and {x.dtype for x in moments} == {np.dtype(np.float32)}


def _sft_run(tmp_path, steps, base_dtype='float32'):
  """sft.py's arguments on a tiny HF GPT-2 (safetensors in `base_dtype`) and JSON-lines data."""
  from lm.data import corpus
  from lm.data import tokenizer as tokenizer_lib

  tok = tokenizer_lib.train_tokenizer(corpus.python_docs_corpus()[:60], 'bpe', 600)
  tiny_gpt2_dir(tok, tmp_path / 'init', base_dtype)
  data = tmp_path / 'sum.jsonl'
  data.write_text(
    '\n'.join(
      json.dumps({'document': f'Item {i} has {i % 7} parts.', 'summary': f'Item {i}.'})
      for i in range(200)
    )
  )
  return [
    '--config=configs/summarize.py',
    f'--config.init_checkpoint={tmp_path / "init"}',
    '--config.data.source=files',
    f'--config.data.files={data}',
    '--config.data.template=plain',
    '--config.data.seq_len=64',
    '--config.data.max_prompt_len=32',
    '--config.data.eval_fraction=0.0',
    '--config.train.batch_size=8',
    f'--config.train.steps={steps}',
    '--config.train.warmup_steps=10',
    '--config.checkpoint_every=50',
    '--config.log_every=10',
    f'--config.eval_every={steps}',
  ]


@pytest.mark.slow
def test_lora_sft_on_a_bf16_base_resumes_bitwise_and_exports_bf16(tmp_path):
  """sft.py with LoRA on a tiny bfloat16 HF GPT-2 and JSON-lines data: the base stays bfloat16
  (frozen), and a run killed with -9 at a random step and resumed ends on the same params
  (adapters and base) as the uninterrupted run. export.py then writes the merged model as
  bfloat16 safetensors, which transformers loads bit for bit as the params we hold, giving our
  logits on them (widened to float32) within 1e-5."""
  import torch
  import transformers

  from lm import hf

  steps = 400
  args = [
    *_sft_run(tmp_path, steps, 'bfloat16'),
    '--config.lora.rank=4',
    '--config.lora.dropout=0.1',
  ]
  straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
  run_script('sft.py', *args, f'--workdir={straight}')
  run_killed_and_resumed('sft.py', args, resumed, (100, steps - 100), tmp_path / 'killed.log')
  a, b = (pretrained.load(str(w), which='latest') for w in (straight, resumed))
  assert a.step == b.step == steps and a.cfg.lora_rank == 4 and a.cfg.param_dtype == 'bfloat16'
  fa, fb = _flat(a.params), _flat(b.params)
  assert any(k.endswith('lora_b') for k in fa) and fa.keys() == fb.keys()
  assert fa['stack/layers_0/attention/query/kernel'].dtype == jnp.bfloat16
  for k in fa:
    assert np.array_equal(fa[k], fb[k]), k

  out = tmp_path / 'export'
  run_script('export.py', f'--checkpoint={resumed}', f'--output={out}', '--which=latest')
  ours = b.body(str(resumed), 'export')
  assert {x.dtype for x in jax.tree.leaves(ours.params)} == {jnp.dtype(jnp.bfloat16)}
  assert json.loads((out / 'config.json').read_text())['torch_dtype'] == 'bfloat16'
  theirs = transformers.AutoModelForCausalLM.from_pretrained(out)
  assert theirs.dtype == torch.bfloat16
  want = hf.to_hf('gpt2', ours.params, ours.cfg)
  got = theirs.state_dict()
  assert set(want) <= set(got)
  for k, v in want.items():
    assert np.array_equal(got[k].float().numpy(), np.asarray(v, np.float32)), k
  ids = np.random.default_rng(0).integers(0, ours.cfg.vocab_size, (2, 12))
  with torch.no_grad():
    ref = theirs.float().eval()(torch.from_numpy(ids)).logits.numpy()
  logits = ours.model.apply({'params': ours.params}, jnp.asarray(ids, jnp.int32))
  np.testing.assert_allclose(np.asarray(logits), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
