"""HF interop: logits match the PyTorch reference models, round trips are exact, files load, and
any mismatch is an error naming the tensor."""

import dataclasses
import functools
import json
import re

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402

from lm import hf  # noqa: E402
from lm import models as M  # noqa: E402

# float32 on both sides: only summation order differs. atol is RTOL of the largest reference
# logit, so values near zero are held to the same absolute precision as the big ones.
RTOL = 1e-5

HF_CONFIGS = {
  'bert': lambda: transformers.BertConfig(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
  ),
  'gpt2': lambda: transformers.GPT2Config(  # n_inner None: 4 * n_embd
    vocab_size=99,
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
}
HF_CLASSES = {'bert': 'BertForPreTraining', 'gpt2': 'GPT2LMHeadModel'}
AUTO_CLASSES = {'bert': 'AutoModelForPreTraining', 'gpt2': 'AutoModelForCausalLM'}
KINDS = sorted(HF_CONFIGS)


def _perturb(model, seed=0):
  """HF inits biases to 0 and LayerNorms to 1/0, which would hide a swapped mapping: noise on
  every tensor makes each one observable (ties survive: parameters() lists a tied one once)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn(p.shape, generator=g))
  return model.eval()


@functools.cache
def _hf_model(kind):
  torch.manual_seed(0)
  return _perturb(getattr(transformers, HF_CLASSES[kind])(HF_CONFIGS[kind]()))


def _batch():
  """Right-padded rows of different lengths, token types 0 and 1 in one batch."""
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 99, (3, 12)).astype(np.int64)
  mask = np.ones_like(ids)
  mask[1, 8:] = mask[2, 5:] = 0
  types = np.zeros_like(ids)
  types[1, 4:] = types[2, 3:] = 1
  return ids, mask, types


def _hf_logits(kind, model, ids, mask, types):
  t = torch.from_numpy
  with torch.no_grad():
    if kind == 'bert':
      out = model(input_ids=t(ids), attention_mask=t(mask), token_type_ids=t(types))
      return {'mlm_logits': out.prediction_logits, 'nsp_logits': out.seq_relationship_logits}
    return {'logits': model(input_ids=t(ids), attention_mask=t(mask)).logits}


def _our_logits(kind, cfg, params, ids, mask, types):
  out = hf.module(kind, cfg).apply(
    {'params': params}, ids, *([types] if kind == 'bert' else []), attention_mask=mask
  )
  return out if kind == 'bert' else {'logits': out}


def _assert_logits_match(ours, ref, mask):
  """Per-token logits at real positions only (padding rows are don't-care in both)."""
  real = mask.astype(bool)
  for name, r in ref.items():
    r = np.asarray(r)
    o = np.asarray(ours[name])
    if r.ndim == 3:
      o, r = o[real], r[real]
    np.testing.assert_allclose(o, r, rtol=RTOL, atol=RTOL * np.abs(r).max(), err_msg=name)


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('scan', [False, True])
def test_logits_match_pytorch(kind, scan):
  hf_model = _hf_model(kind)
  _, cfg = hf.config_from_hf(hf_model.config)
  cfg = dataclasses.replace(cfg, scan_layers=scan)
  params = hf.from_hf(kind, hf_model.state_dict(), cfg)
  ids, mask, types = _batch()
  ours = _our_logits(kind, cfg, params, ids, mask, types)
  _assert_logits_match(ours, _hf_logits(kind, hf_model, ids, mask, types), mask)


def test_bert_encode_matches_hidden_states():
  hf_model = _hf_model('bert')
  _, cfg = hf.config_from_hf(hf_model.config)
  params = hf.bert_from_hf(hf_model.state_dict(), cfg)
  ids, mask, types = _batch()
  hidden, _ = hf.module('bert', cfg).apply({'params': params}, ids, types, mask, method='encode')
  with torch.no_grad():
    ref = hf_model(
      input_ids=torch.from_numpy(ids),
      attention_mask=torch.from_numpy(mask),
      token_type_ids=torch.from_numpy(types),
      output_hidden_states=True,
    )
  _assert_logits_match({'h': hidden}, {'h': ref.hidden_states[-1]}, mask)


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('scan', [False, True])
def test_state_dict_round_trip_is_exact(kind, scan):
  hf_model = _hf_model(kind)
  _, cfg = hf.config_from_hf(hf_model.config)
  cfg = dataclasses.replace(cfg, scan_layers=scan)
  sd = {k: v.numpy() for k, v in hf_model.state_dict().items()}
  back = hf.to_hf(kind, hf.from_hf(kind, sd, cfg), cfg)
  assert set(back) == set(sd)
  for k, v in sd.items():
    assert back[k].dtype == v.dtype, k
    np.testing.assert_array_equal(back[k], v, err_msg=k)


OURS = {
  'bert': M.ModelConfig(
    vocab_size=99,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    mlp_dim=48,
    max_len=64,
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
  ),
  'gpt2': M.ModelConfig(
    vocab_size=99,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    mlp_dim=48,
    max_len=64,
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
    pre_ln=True,
    type_vocab_size=0,
    activation='gelu_tanh',
    layer_norm_eps=1e-5,
  ),
}


@pytest.mark.parametrize('kind', KINDS)
def test_export_loads_in_transformers(kind, tmp_path):
  cfg = dataclasses.replace(OURS[kind], scan_layers=kind == 'gpt2')
  ids, mask, types = _batch()
  params = nn.unbox(hf.module(kind, cfg).init(jax.random.PRNGKey(0), ids))['params']
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))  # non-trivial biases and LNs
  params = tree.unflatten([x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])

  hf.export_pretrained(kind, cfg, params, tmp_path)
  auto = getattr(transformers, AUTO_CLASSES[kind])
  model, info = auto.from_pretrained(tmp_path, output_loading_info=True)
  assert type(model).__name__ == HF_CLASSES[kind]
  assert not any(info.values()), info  # no missing / unexpected / mismatched keys
  _assert_logits_match(
    _our_logits(kind, cfg, params, ids, mask, types),
    _hf_logits(kind, model.eval(), ids, mask, types),
    mask,
  )
  assert hf.config_from_hf(json.loads((tmp_path / 'config.json').read_text())) == (
    kind,
    dataclasses.replace(cfg, scan_layers=False),
  )


@pytest.mark.parametrize('kind', KINDS)
def test_import_pretrained_from_files(kind, tmp_path):
  hf_model = _hf_model(kind)
  _, cfg = hf.config_from_hf(hf_model.config)
  want = hf.from_hf(kind, hf_model.state_dict(), cfg)
  hf_model.save_pretrained(tmp_path / 'safetensors')
  hf_model.save_pretrained(tmp_path / 'sharded', max_shard_size='40KB')
  assert (tmp_path / 'safetensors' / 'model.safetensors').exists()
  assert (tmp_path / 'sharded' / 'model.safetensors.index.json').exists()
  (tmp_path / 'bin').mkdir()
  (tmp_path / 'bin' / 'config.json').write_text(hf_model.config.to_json_string())
  torch.save(hf_model.state_dict(), tmp_path / 'bin' / 'pytorch_model.bin')
  for d in ('safetensors', 'sharded', 'bin'):
    got_kind, got_cfg, params = hf.import_pretrained(tmp_path / d)
    assert (got_kind, got_cfg) == (kind, cfg), d
    _assert_trees_equal(params, want)
  _, scan_cfg, params = hf.import_pretrained(tmp_path / 'bin', scan_layers=True)
  _assert_trees_equal(params, hf.from_hf(kind, hf_model.state_dict(), scan_cfg))


def test_original_gpt2_layout_loads():
  """Hub GPT-2 files: bare `GPT2Model` names, causal-mask buffers, no lm_head."""
  hf_model = _hf_model('gpt2')
  _, cfg = hf.config_from_hf(hf_model.config)
  sd = {
    k.removeprefix('transformer.'): v
    for k, v in hf_model.state_dict().items()
    if k != 'lm_head.weight'
  }
  for i in range(cfg.num_layers):
    sd[f'h.{i}.attn.bias'] = torch.ones(1, 1, 64, 64)
    sd[f'h.{i}.attn.masked_bias'] = torch.tensor(-1e4)
  _assert_trees_equal(hf.gpt2_from_hf(sd, cfg), hf.gpt2_from_hf(hf_model.state_dict(), cfg))


def _raises(key, fn, *args):
  with pytest.raises(ValueError, match=re.escape(key)):
    fn(*args)


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('scan', [False, True])
def test_mismatches_raise_naming_the_key(kind, scan):
  hf_model = _hf_model(kind)
  _, cfg = hf.config_from_hf(hf_model.config)
  cfg = dataclasses.replace(cfg, scan_layers=scan)
  sd = dict(hf_model.state_dict())
  p = hf.BERT.layer_prefix if kind == 'bert' else hf.GPT2.layer_prefix
  layer_key = p.format(i=1) + ('output.dense.bias' if kind == 'bert' else 'mlp.c_fc.weight')
  top_key = 'bert.pooler.dense.weight' if kind == 'bert' else 'transformer.wpe.weight'
  alias = next(iter(hf.SPECS[kind].tied))

  _raises(layer_key, hf.from_hf, kind, {k: v for k, v in sd.items() if k != layer_key}, cfg)
  _raises(layer_key, hf.from_hf, kind, {**sd, layer_key: sd[layer_key][..., :-1]}, cfg)
  _raises(top_key, hf.from_hf, kind, {**sd, top_key: sd[top_key].T[:-1]}, cfg)
  extra = p.format(i=2) + 'whatever.weight'
  _raises(
    extra.removeprefix(hf.SPECS[kind].prefix), hf.from_hf, kind, {**sd, extra: sd[top_key]}, cfg
  )
  _raises(alias, hf.from_hf, kind, {**sd, alias: sd[alias] + 1}, cfg)  # untied head
  _raises(p.format(i=2), hf.from_hf, kind, sd, dataclasses.replace(cfg, num_layers=3))  # missing

  params = hf.from_hf(kind, sd, cfg)
  params['embed']['token']['embedding'] = params['embed']['token']['embedding'][:-1]
  _raises('embed/token/embedding', hf.to_hf, kind, params, cfg)


@pytest.mark.parametrize(
  'config',
  [
    lambda: transformers.BertConfig(hidden_act='mish'),
    lambda: {'model_type': 'bert', 'position_embedding_type': 'relative_key'},
    lambda: transformers.BertConfig(is_decoder=True),
    lambda: transformers.BertConfig(tie_word_embeddings=False),
    lambda: transformers.GPT2Config(scale_attn_by_inverse_layer_idx=True),
    lambda: transformers.GPT2Config(activation_function='swish'),
    lambda: {'model_type': 'mixtral'},
  ],
)
def test_unsupported_configs_are_refused(config):
  with pytest.raises(ValueError, match='nsupported'):
    hf.config_from_hf(config())


def test_inexpressible_configs_are_refused(tmp_path):
  for kind, bad in [
    ('gpt2', dict(position='rope')),
    ('bert', dict(pre_ln=True)),
    ('gpt2', dict(type_vocab_size=2)),
  ]:
    cfg = dataclasses.replace(OURS[kind], **bad)
    with pytest.raises(ValueError, match=next(iter(bad))):
      hf.config_to_hf(kind, cfg)
