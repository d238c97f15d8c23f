"""PEFT LoRA adapters <-> ours (`lm.hf.peft`) on tiny random HF Llama, Qwen2, GPT-2 and T5
models, all six targets, float32: a PEFT adapter loads into our params with the PeftModel's
logits; ours save as an adapter that `peft.PeftModel.from_pretrained` loads with our logits (and
that loads back bit for bit); a merged export loads in transformers with the logits of PEFT's
`merge_and_unload()`. Each family adds a twist: Llama per-module ranks and alphas (padded and
rescaled on import), Qwen2 rsLoRA, GPT-2 its fused c_attn (one A for q/k/v in; block-diagonal
rank 3r out, and a q/v-only variant), T5 cross-attention and the gated MLP; Llama and T5 are
imported with scanned layers (stacked adapters), Qwen2 and GPT-2 without. export.py runs once."""

import copy
import dataclasses
import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
peft = pytest.importorskip('peft')

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
from conftest import ROOT  # noqa: E402
from flax import traverse_util  # noqa: E402
from test_hf import RTOL, _perturb  # noqa: E402

from lm import hf  # noqa: E402
from lm.models import lora  # noqa: E402

ALL = ','.join(lora.TARGETS)
DECODER = dict(
  vocab_size=96,
  hidden_size=32,
  intermediate_size=48,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  max_position_embeddings=64,
  bos_token_id=None,
  eos_token_id=None,
)
HF_CONFIGS = {
  'llama': lambda: transformers.LlamaConfig(**DECODER, attention_bias=True, mlp_bias=True),
  'qwen2': lambda: transformers.Qwen2Config(
    **dict(DECODER, num_key_value_heads=1), tie_word_embeddings=True
  ),
  'gpt2': lambda: transformers.GPT2Config(
    vocab_size=96,
    n_embd=32,
    n_layer=2,
    n_head=4,
    n_positions=64,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
    bos_token_id=1,
    eos_token_id=1,
  ),
  't5': lambda: transformers.T5Config(
    vocab_size=96,
    d_model=16,
    d_kv=6,
    d_ff=24,
    num_heads=3,
    num_layers=2,
    num_decoder_layers=1,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=20,
    dropout_rate=0.0,
    feed_forward_proj='gated-gelu',
    tie_word_embeddings=False,
    decoder_start_token_id=0,
  ),
}
CLASSES = {
  'llama': 'LlamaForCausalLM',
  'qwen2': 'Qwen2ForCausalLM',
  'gpt2': 'GPT2LMHeadModel',
  't5': 'T5ForConditionalGeneration',
}
# PEFT's usual target names for all six of our targets.
TARGET_MODULES = {
  'llama': ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
  'gpt2': ['c_attn', 'c_proj', 'c_fc'],
  't5': ['q', 'k', 'v', 'o', 'wi_0', 'wi_1', 'wo'],
}
TARGET_MODULES['qwen2'] = TARGET_MODULES['llama']
# Beyond r=4, alpha=8: what PEFT lets each adapter vary.
PEFT_EXTRA = {
  'llama': dict(rank_pattern={'v_proj': 2, 'down_proj': 3}, alpha_pattern={'o_proj': 5.0}),
  'qwen2': dict(use_rslora=True),
  'gpt2': dict(fan_in_fan_out=True),  # Conv1D: PEFT sets it (with a warning) if not
  't5': {},
}
FAMILIES = sorted(HF_CONFIGS)
# Imported with scanned layers (stacked adapters; and XLA compiles one layer, not each):
SCANNED = ('llama', 't5')


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
  return tmp_path_factory.mktemp('peft')


@functools.cache
def _base(family, root):
  """(HF model dir, HF model, kind, cfg, params): a perturbed random HF model, saved and imported
  with `lm.hf.import_pretrained` (scanned for SCANNED)."""
  torch.manual_seed(0)
  model = _perturb(getattr(transformers, CLASSES[family])(HF_CONFIGS[family]()))
  path = os.path.join(root, f'{family}_base')
  model.save_pretrained(path)
  kind, cfg, params = hf.import_pretrained(path, scan_layers=family in SCANNED)
  assert kind == family and cfg.param_dtype == 'float32'
  return path, model, kind, cfg, jax.tree.map(np.asarray, params)


def _fresh(family, root):
  return copy.deepcopy(_base(family, str(root))[1])


def _batch(family):
  """Right-padded rows (and decoder rows for T5)."""
  rng = np.random.default_rng(0)
  ids = rng.integers(2, 96, (3, 10)).astype(np.int64)
  mask = np.ones_like(ids)
  mask[1, 7:] = mask[2, 4:] = 0
  if family != 't5':
    return dict(input_ids=ids, attention_mask=mask)
  dec = rng.integers(2, 96, (3, 6)).astype(np.int64)
  dec_mask = np.ones_like(dec)
  dec_mask[2, 3:] = 0
  return dict(
    input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask
  )


def _torch_logits(model, batch):
  with torch.no_grad():
    return model.eval()(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()


@functools.cache
def _forward(kind, cfg):
  """Our compiled forward (op by op, a first call compiles every op: seconds more); cached per
  config, which the tests of one family share."""
  model = hf.module(kind, cfg)
  if kind == 't5':
    return jax.jit(
      lambda p, ids, mask, dec, dec_mask: model.apply({'params': p}, ids, dec, mask, dec_mask)
    )
  return jax.jit(lambda p, ids, mask: model.apply({'params': p}, ids, attention_mask=mask))


def _our_logits(kind, cfg, params, batch):
  return np.asarray(_forward(kind, cfg)(params, *batch.values()))


def _assert_close(ours, ref, batch, base=None):
  """Logits at real positions within RTOL of the largest; `base` (the model without adapters)
  must differ by far more, so the adapters are seen."""
  real = batch.get('decoder_attention_mask', batch['attention_mask']).astype(bool)
  ours, ref = ours[real], ref[real]
  np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=RTOL * np.abs(ref).max())
  if base is not None:
    assert np.abs(base[real] - ref).max() > 1e-2 * np.abs(ref).max()


def _flat(params):
  return traverse_util.flatten_dict(params, sep='/')


def _adapters(params):
  return {k: v for k, v in _flat(params).items() if k.endswith(('/lora_a', '/lora_b'))}


@pytest.mark.parametrize('family', FAMILIES)
def test_peft_adapter_loads_with_peftmodel_logits(family, workspace):
  path, _, kind, cfg, params = _base(family, str(workspace))
  batch = _batch(family)
  config = peft.LoraConfig(
    r=4,
    lora_alpha=8,
    lora_dropout=0.1,
    target_modules=TARGET_MODULES[family],
    task_type='SEQ_2_SEQ_LM' if family == 't5' else 'CAUSAL_LM',
    **PEFT_EXTRA[family],
  )
  model = peft.get_peft_model(_fresh(family, workspace), config)
  torch.manual_seed(1)
  with torch.no_grad():  # PEFT's init has B = 0: random A and B make every adapter count
    for name, p in model.named_parameters():
      if 'lora_' in name:
        p.copy_(0.3 * torch.randn(p.shape))
  adapter = workspace / f'{family}_peft'
  model.save_pretrained(adapter)
  ref = _torch_logits(model, batch)

  got_cfg, got = hf.load_adapter(adapter, kind, cfg, params)
  assert (got_cfg.lora_targets, got_cfg.lora_dropout) == (ALL, 0.1)
  lora_fields = dict(lora_rank=4, lora_alpha=got_cfg.lora_alpha, lora_dropout=0.1, lora_targets=ALL)
  assert got_cfg == dataclasses.replace(cfg, **lora_fields)
  base = _torch_logits(_fresh(family, workspace), batch)
  _assert_close(_our_logits(kind, got_cfg, got, batch), ref, batch, base)


@pytest.fixture(params=FAMILIES + ['gpt2_qv'])
def family_and_targets(request):
  family = request.param.split('_')[0]
  return family, 'q,v' if request.param.endswith('_qv') else ALL


@functools.cache
def _ours_adapted(family, targets, root):
  """(kind, LoRA cfg, params, adapter dir): our random adapters (non-zero lora_b) on the imported
  base, saved with `save_adapter`."""
  _, _, kind, cfg, params = _base(family, root)
  cfg = dataclasses.replace(  # test_peft_adapter_loads_...'s config: the same compiled forward
    cfg, lora_rank=4, lora_alpha=8.0, lora_dropout=0.1, lora_targets=targets
  )
  shapes = jax.eval_shape(hf.module(kind, cfg).init, jax.random.PRNGKey(0), *_init_args(kind))
  rng = np.random.default_rng(1)
  init = {  # A as PEFT's init draws it (uniform, +-1/sqrt(in)); B random too, not zeros
    k: (rng.uniform(-1, 1, v.shape) / np.sqrt(v.shape[-2] if k.endswith('a') else 4)).astype(
      np.float32
    )
    for k, v in _flat(nn.unbox(shapes['params'])).items()
    if k.endswith(('/lora_a', '/lora_b'))
  }
  adapted = _flat(jax.tree.map(np.asarray, params))
  adapted.update(init)
  adapted = traverse_util.unflatten_dict(adapted, sep='/')
  directory = os.path.join(root, f'{family}_{targets.replace(",", "")}_ours')
  hf.save_adapter(directory, kind, cfg, adapted)
  return kind, cfg, adapted, directory


def _init_args(kind):
  ids = np.zeros((1, 4), np.int32)
  return (ids, ids) if kind == 't5' else (ids,)


def test_our_adapter_loads_in_peft_with_our_logits(family_and_targets, workspace):
  family, targets = family_and_targets
  kind, cfg, params, adapter = _ours_adapted(family, targets, str(workspace))
  config = json.loads((workspace / adapter / 'adapter_config.json').read_text())
  if family == 'gpt2':  # one rank-3r adapter on the fused q/k/v Conv1D, at the scaling alpha / r
    assert config['rank_pattern'] == {'c_attn': 12} and config['alpha_pattern'] == {'c_attn': 24.0}
  batch = _batch(family)
  model = peft.PeftModel.from_pretrained(_fresh(family, workspace), adapter)
  saved = safetensors.numpy.load_file(os.path.join(adapter, 'adapter_model.safetensors'))
  loaded = peft.get_peft_model_state_dict(model)  # PEFT found a place for every tensor
  assert sorted(loaded) == sorted(saved)
  for k, v in saved.items():
    np.testing.assert_array_equal(loaded[k].numpy(), v, err_msg=k)
  base = _torch_logits(_fresh(family, workspace), batch)
  _assert_close(_our_logits(kind, cfg, params, batch), _torch_logits(model, batch), batch, base)

  # ... and back: the same config and adapters, bit for bit (GPT-2's blocks split again).
  base_params = _base(family, str(workspace))[4]
  got_cfg, got = hf.load_adapter(adapter, kind, lora.base_config(cfg), base_params)
  assert got_cfg == dataclasses.replace(cfg, quant='none')
  want, have = _adapters(params), _adapters(got)
  assert sorted(want) == sorted(have)
  for k in want:
    np.testing.assert_array_equal(have[k], want[k], err_msg=k)


def test_merged_export_matches_peft_merge_and_unload(family_and_targets, workspace):
  family, targets = family_and_targets
  kind, cfg, params, adapter = _ours_adapted(family, targets, str(workspace))
  out = workspace / f'{family}_{targets.replace(",", "")}_merged'
  hf.export_merged(out, kind, cfg, params)
  auto = transformers.AutoModelForSeq2SeqLM if family == 't5' else transformers.AutoModelForCausalLM
  merged, info = auto.from_pretrained(out, output_loading_info=True)
  assert not any(info.values()), info
  ref = peft.PeftModel.from_pretrained(_fresh(family, workspace), adapter).merge_and_unload()
  batch = _batch(family)
  base = _torch_logits(_fresh(family, workspace), batch)
  _assert_close(_torch_logits(merged, batch), _torch_logits(ref, batch), batch, base)


def test_unsupported_adapters_are_refused(workspace):
  path, _, kind, cfg, params = _base('llama', str(workspace))
  config = peft.LoraConfig(r=2, target_modules=['q_proj', 'lm_head'])
  adapter = workspace / 'llama_lm_head'
  peft.get_peft_model(_fresh('llama', workspace), config).save_pretrained(adapter)
  with pytest.raises(ValueError, match=r'cannot adapt: lm_head \(llama adapts'):
    hf.load_adapter(adapter, kind, cfg, params)

  config = peft.LoraConfig(r=2, target_modules=['q_proj'])
  adapter = workspace / 'llama_q'
  peft.get_peft_model(_fresh('llama', workspace), config).save_pretrained(adapter)
  got_cfg, _ = hf.load_adapter(adapter, kind, cfg, params)  # plain: loads
  assert got_cfg.lora_targets == 'q'
  file = adapter / 'adapter_config.json'
  plain = json.loads(file.read_text())
  for key, value in [
    ('use_dora', True),
    ('bias', 'lora_only'),
    ('modules_to_save', ['lm_head']),
    ('init_lora_weights', 'pissa'),
    ('peft_type', 'IA3'),
  ]:
    file.write_text(json.dumps({**plain, key: value}))
    with pytest.raises(ValueError, match=f'{key}='):
      hf.load_adapter(adapter, kind, cfg, params)


def test_export_script_writes_the_model(workspace):
  """export.py on an HF directory (a body without adapters): the merged export is the model
  itself; save_adapter refuses, naming what is missing."""
  path = _base('gpt2', str(workspace))[0]
  out = workspace / 'gpt2_export'
  done = subprocess.run(
    [sys.executable, 'export.py', f'--checkpoint={path}', f'--output={out}'],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=False,
  )
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() == f'wrote the gpt2 model to {out}'
  got, want = hf.load_state_dict(out), hf.load_state_dict(path)
  assert sorted(got) == sorted(want)
  for k, v in got.items():
    np.testing.assert_array_equal(v, want[k], err_msg=k)
  _, _, kind, cfg, params = _base('gpt2', str(workspace))
  with pytest.raises(ValueError, match='no LoRA adapters to save'):
    hf.save_adapter(workspace / 'none', kind, cfg, params)
