"""HuggingFace interop: BERT (`BertForPreTraining`) and GPT-2 (`GPT2LMHeadModel`) checkpoints.

Each model is one table of (our param paths, HF tensor name, codec) rules; the per-layer part is
written once and expanded per layer, stacking on a leading axis when `cfg.scan_layers`. Both
directions check the table against the model's own parameter shapes (`jax.eval_shape` of init),
so a missing, unexpected or mis-shaped tensor raises a ValueError naming every offender instead
of silently loading part of a checkpoint.

Needs no transformers; torch only to read `pytorch_model.bin`.
"""

import dataclasses
import json
import pathlib
import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lm import model as M

StateDict = dict[str, np.ndarray]


# ------------------------------------------------------------------------------------------------
# Tensor layout.


@dataclasses.dataclass(frozen=True)
class Codec:
  """One HF tensor <-> one or more of our leaves."""

  split: Callable[[np.ndarray], tuple]  # HF tensor -> our leaves
  join: Callable[[list], np.ndarray]  # our leaves -> HF tensor


SAME = Codec(lambda w: (w,), lambda ws: ws[0])
LINEAR = Codec(lambda w: (w.T,), lambda ws: ws[0].T)  # torch Linear is [out, in]; Dense [in, out]
QKV = Codec(lambda w: tuple(np.split(w, 3, -1)), lambda ws: np.concatenate(ws, -1))  # GPT-2 c_attn


@dataclasses.dataclass(frozen=True)
class Rule:
  ours: tuple  # our param paths ('a/b/kernel'), relative to a layer for per-layer rules
  hf: str  # HF name, relative to `Spec.layer_prefix` for per-layer rules
  codec: Codec = SAME


def _dense(ours, hf, codec=LINEAR):
  """A Dense layer (or fused Dense layers: `ours` a tuple) <-> HF `.weight` / `.bias`."""
  mods = (ours,) if isinstance(ours, str) else ours
  return [
    Rule(tuple(f'{m}/kernel' for m in mods), f'{hf}.weight', codec),
    Rule(tuple(f'{m}/bias' for m in mods), f'{hf}.bias', QKV if codec is QKV else SAME),
  ]


def _norm(ours, hf):
  return [Rule((f'{ours}/scale',), f'{hf}.weight'), Rule((f'{ours}/bias',), f'{hf}.bias')]


def _emb(ours, hf):
  return Rule((f'{ours}/embedding',), f'{hf}.weight')


@dataclasses.dataclass(frozen=True)
class Spec:
  """Everything that differs between the supported architectures."""

  module: type  # our nn.Module
  architecture: str  # HF class written to config.json
  prefix: str  # HF base-model prefix; bare-model checkpoints lack it
  top: list  # rules outside the layer stack
  layer_prefix: str
  layer: list
  tied: dict  # HF alias -> the HF name it is tied to (one param here)
  fixed: dict  # ModelConfig fields the architecture pins
  config: dict  # ModelConfig field -> HF config key
  activation_key: str
  hf_defaults: dict  # HF class defaults: saved configs omit some keys
  hf_allowed: dict  # HF config key -> values we can reproduce (first = assumed when absent)
  hf_extra: dict  # written on export


BERT = Spec(
  module=M.Encoder,
  architecture='BertForPreTraining',
  prefix='bert.',
  top=[
    _emb('embed/token', 'bert.embeddings.word_embeddings'),
    _emb('embed/position', 'bert.embeddings.position_embeddings'),
    _emb('embed/segment', 'bert.embeddings.token_type_embeddings'),
    *_norm('embed/ln', 'bert.embeddings.LayerNorm'),
    *_dense('pooler', 'bert.pooler.dense'),
    *_dense('mlm_dense', 'cls.predictions.transform.dense'),
    *_norm('mlm_ln', 'cls.predictions.transform.LayerNorm'),
    Rule(('mlm_bias',), 'cls.predictions.bias'),
    *_dense('nsp', 'cls.seq_relationship'),
  ],
  layer_prefix='bert.encoder.layer.{i}.',
  layer=[
    *_dense('attention/query', 'attention.self.query'),
    *_dense('attention/key', 'attention.self.key'),
    *_dense('attention/value', 'attention.self.value'),
    *_dense('attention/out', 'attention.output.dense'),
    *_norm('ln_attention', 'attention.output.LayerNorm'),
    *_dense('mlp/wi', 'intermediate.dense'),
    *_dense('mlp/wo', 'output.dense'),
    *_norm('ln_mlp', 'output.LayerNorm'),
  ],
  tied={
    'cls.predictions.decoder.weight': 'bert.embeddings.word_embeddings.weight',
    'cls.predictions.decoder.bias': 'cls.predictions.bias',
  },
  fixed=dict(pre_ln=False, position='learned'),
  config=dict(
    vocab_size='vocab_size',
    hidden_size='hidden_size',
    num_layers='num_hidden_layers',
    num_heads='num_attention_heads',
    mlp_dim='intermediate_size',
    max_len='max_position_embeddings',
    type_vocab_size='type_vocab_size',
    layer_norm_eps='layer_norm_eps',
    dropout_rate='hidden_dropout_prob',
    attention_dropout_rate='attention_probs_dropout_prob',
    initializer_range='initializer_range',
  ),
  activation_key='hidden_act',
  hf_defaults=dict(
    vocab_size=30522,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act='gelu',
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    max_position_embeddings=512,
    type_vocab_size=2,
    initializer_range=0.02,
    layer_norm_eps=1e-12,
  ),
  hf_allowed=dict(
    position_embedding_type=('absolute',),
    is_decoder=(False,),
    add_cross_attention=(False,),
    tie_word_embeddings=(True,),
  ),
  hf_extra=dict(position_embedding_type='absolute', tie_word_embeddings=True),
)

GPT2 = Spec(
  module=M.Decoder,
  architecture='GPT2LMHeadModel',
  prefix='transformer.',
  top=[
    _emb('embed/token', 'transformer.wte'),
    _emb('embed/position', 'transformer.wpe'),
    *_norm('ln_final', 'transformer.ln_f'),
  ],
  layer_prefix='transformer.h.{i}.',
  layer=[
    *_norm('ln_attention', 'ln_1'),  # Conv1D weights are already [in, out]: SAME
    *_dense(('attention/query', 'attention/key', 'attention/value'), 'attn.c_attn', QKV),
    *_dense('attention/out', 'attn.c_proj', SAME),
    *_norm('ln_mlp', 'ln_2'),
    *_dense('mlp/wi', 'mlp.c_fc', SAME),
    *_dense('mlp/wo', 'mlp.c_proj', SAME),
  ],
  tied={'lm_head.weight': 'transformer.wte.weight'},
  fixed=dict(pre_ln=True, position='learned', type_vocab_size=0),
  config=dict(
    vocab_size='vocab_size',
    hidden_size='n_embd',
    num_layers='n_layer',
    num_heads='n_head',
    mlp_dim='n_inner',
    max_len='n_positions',
    layer_norm_eps='layer_norm_epsilon',
    dropout_rate='resid_pdrop',
    attention_dropout_rate='attn_pdrop',
    initializer_range='initializer_range',
  ),
  activation_key='activation_function',
  hf_defaults=dict(
    vocab_size=50257,
    n_positions=1024,
    n_embd=768,
    n_layer=12,
    n_head=12,
    n_inner=None,
    activation_function='gelu_new',
    resid_pdrop=0.1,
    attn_pdrop=0.1,
    layer_norm_epsilon=1e-5,
    initializer_range=0.02,
  ),
  hf_allowed=dict(
    scale_attn_weights=(True,),
    scale_attn_by_inverse_layer_idx=(False,),
    add_cross_attention=(False,),
    tie_word_embeddings=(True,),
  ),
  hf_extra=dict(tie_word_embeddings=True),
)

SPECS = {'bert': BERT, 'gpt2': GPT2}

# HF activation -> ours (exact equivalents only), and back.
_ACTIVATIONS = {
  'gelu': 'gelu',
  'gelu_new': 'gelu_tanh',
  'gelu_pytorch_tanh': 'gelu_tanh',
  'relu': 'relu',
}
_HF_ACTIVATION = {'gelu': 'gelu', 'gelu_tanh': 'gelu_new', 'relu': 'relu'}


def module(kind: str, cfg: M.ModelConfig) -> nn.Module:
  return _spec(kind).module(cfg)


def _spec(kind: str) -> Spec:
  if kind not in SPECS:
    raise ValueError(f'Unsupported model kind {kind!r}; supported: {sorted(SPECS)}.')
  return SPECS[kind]


# ------------------------------------------------------------------------------------------------
# Configs.


def config_from_hf(hf_config) -> tuple[str, M.ModelConfig]:
  """(kind, ModelConfig) from an HF config (dict or PretrainedConfig); refuses what we'd compute
  differently, since a silently different architecture would load fine and predict garbage."""
  d = dict(hf_config if isinstance(hf_config, dict) else hf_config.to_dict())
  kind = d.get('model_type')
  spec = _spec(kind)
  d = {**spec.hf_defaults, **d}
  bad = [
    f'{k}={d[k]!r} (supported: {list(ok)})'
    for k, ok in spec.hf_allowed.items()
    if d.get(k, ok[0]) not in ok
  ]
  act = d[spec.activation_key]
  if act not in _ACTIVATIONS:
    bad.append(f'{spec.activation_key}={act!r} (supported: {sorted(_ACTIVATIONS)})')
  if bad:
    raise ValueError(f'Unsupported {kind} config: {"; ".join(bad)}.')
  fields = {ours: d[theirs] for ours, theirs in spec.config.items()}
  if fields['mlp_dim'] is None:  # GPT-2 n_inner
    fields['mlp_dim'] = 4 * fields['hidden_size']
  return kind, M.ModelConfig(**fields, **spec.fixed, activation=_ACTIVATIONS[act])


def config_to_hf(kind: str, cfg: M.ModelConfig, **hf_overrides: Any) -> dict:
  """config.json contents for `kind`'s HF architecture; `hf_overrides` set what ModelConfig does
  not know (bos/eos/pad token ids, ...)."""
  spec = _spec(kind)
  _check_cfg(kind, cfg)
  d = {
    'architectures': [spec.architecture],
    'model_type': kind,
    **{theirs: getattr(cfg, ours) for ours, theirs in spec.config.items()},
    spec.activation_key: _HF_ACTIVATION[cfg.activation],
    **spec.hf_extra,
    'dtype': str(cfg.param_dtype),
  }
  if kind == 'gpt2':
    d['embd_pdrop'] = cfg.dropout_rate  # one dropout rate here
    if cfg.vocab_size <= 50256:  # HF's default bos/eos (50256) would point outside the vocab
      d['bos_token_id'] = d['eos_token_id'] = None
  return {**d, **hf_overrides}


def _check_cfg(kind: str, cfg: M.ModelConfig):
  """Configs the HF architecture cannot express (RoPE, pre-LN BERT, ...)."""
  spec = _spec(kind)
  bad = [
    f'{k}={getattr(cfg, k)!r} (needs {v!r})' for k, v in spec.fixed.items() if getattr(cfg, k) != v
  ]
  if kind == 'bert' and not cfg.type_vocab_size:
    bad.append('type_vocab_size=0 (BERT needs token type embeddings)')
  if cfg.activation not in _HF_ACTIVATION:
    bad.append(f'activation={cfg.activation!r}')
  if bad:
    raise ValueError(f'ModelConfig not expressible as HF {kind}: {"; ".join(bad)}.')


# ------------------------------------------------------------------------------------------------
# State dicts.

_BUFFERS = re.compile(r'(^|\.)(position_ids|token_type_ids|attn\.bias|attn\.masked_bias)$')


def _strip(name: str) -> str:
  for p in (BERT.prefix, GPT2.prefix):
    if name.startswith(p):
      return name[len(p) :]
  return name


def _to_numpy(x) -> np.ndarray:
  if hasattr(x, 'detach'):  # torch.Tensor; numpy has no bfloat16 of its own
    x = x.detach().cpu()
    x = x.float() if str(x.dtype) == 'torch.bfloat16' else x
    return x.numpy()
  return np.asarray(x)


def canonical(state_dict) -> StateDict:
  """HF names without the base-model prefix and numpy values, so checkpoints of the bare model
  (`BertModel`, `GPT2Model`, the original hub files) and of the head models look alike; drops
  buffers and renames TF-era LayerNorm gamma/beta."""
  out = {}
  for k, v in state_dict.items():
    if _BUFFERS.search(k):
      continue
    name = re.sub(r'LayerNorm\.gamma$', 'LayerNorm.weight', _strip(k))
    name = re.sub(r'LayerNorm\.beta$', 'LayerNorm.bias', name)
    if name in out:
      raise ValueError(
        f'State dict holds {name!r} twice (with and without a prefix, or as '
        f'gamma/beta and weight/bias); last seen as {k!r}.'
      )
    out[name] = _to_numpy(v)
  return out


def _load_file(path: pathlib.Path) -> dict:
  if path.suffix == '.safetensors':
    import safetensors.numpy  # pylint: disable=import-outside-toplevel

    return safetensors.numpy.load_file(str(path))
  import torch  # pylint: disable=import-outside-toplevel

  return torch.load(str(path), map_location='cpu', weights_only=True)


_WEIGHT_FILES = (
  'model.safetensors',
  'model.safetensors.index.json',
  'pytorch_model.bin',
  'pytorch_model.bin.index.json',
)


def load_state_dict(path) -> StateDict:
  """A weights file, a sharded `*.index.json`, or an HF directory holding either (safetensors
  preferred), as `canonical` numpy arrays."""
  path = pathlib.Path(path)
  if path.is_dir():
    found = [path / n for n in _WEIGHT_FILES if (path / n).exists()]
    if not found:
      raise FileNotFoundError(f'No weights in {path}; looked for {list(_WEIGHT_FILES)}.')
    path = found[0]
  if path.name.endswith('.index.json'):
    shards = sorted(set(json.loads(path.read_text())['weight_map'].values()))
    raw = {}
    for shard in shards:
      raw.update(_load_file(path.parent / shard))
  else:
    raw = _load_file(path)
  return canonical(raw)


# ------------------------------------------------------------------------------------------------
# Params <-> state dicts.


def _expected_shapes(spec: Spec, cfg: M.ModelConfig) -> dict[str, tuple]:
  """Our param shapes, from tracing init (no compute, no memory)."""
  ids = jnp.zeros((1, 1), jnp.int32)
  cfg = dataclasses.replace(cfg, attention_impl='einsum', remat='none')  # shape-neutral, traceable
  tree = jax.eval_shape(lambda: nn.unbox(spec.module(cfg).init(jax.random.PRNGKey(0), ids)))
  return {k: v.shape for k, v in traverse_util.flatten_dict(tree['params'], sep='/').items()}


def _slots(spec: Spec, cfg: M.ModelConfig):
  """Rules with layers expanded: (leaves, full HF name, codec), a leaf being (path, layer index
  into a scanned stack or None)."""
  for r in spec.top:
    yield tuple((p, None) for p in r.ours), r.hf, r.codec
  for i in range(cfg.num_layers):
    leaf = (
      (lambda p: (f'stack/layers/{p}', i))
      if cfg.scan_layers
      else (lambda p: (f'stack/layers_{i}/{p}', None))
    )
    for r in spec.layer:
      yield tuple(map(leaf, r.ours)), spec.layer_prefix.format(i=i) + r.hf, r.codec


def _leaf_shape(expected, leaf):
  path, i = leaf
  return expected[path] if i is None else expected[path][1:]


def _hf_shape(codec: Codec, shapes) -> tuple:
  return codec.join([np.broadcast_to(np.int8(0), s) for s in shapes]).shape


def _table_errors(spec, cfg, expected) -> list[str]:
  """Our params the table misses or invents (the model changed under the table)."""
  covered = {path for leaves, _, _ in _slots(spec, cfg) for path, _ in leaves}
  return [f'param {p} has no HF counterpart' for p in sorted(set(expected) - covered)] + [
    f'table names param {p} the model lacks' for p in sorted(covered - set(expected))
  ]


def _fail(what: str, **problems):
  lines = [f'  {label} ({len(v)}): {", ".join(v)}' for label, v in problems.items() if v]
  if lines:
    raise ValueError(f'{what}:\n' + '\n'.join(lines))


def from_hf(kind: str, state_dict, cfg: M.ModelConfig) -> dict:
  """Our params tree (plain numpy, `param_dtype`) from an HF state dict, all-or-nothing.

  Unstacked leaves may share memory with the state dict's tensors (no copy of a large model).
  """
  spec = _spec(kind)
  _check_cfg(kind, cfg)
  sd = canonical(state_dict)
  expected = _expected_shapes(spec, cfg)
  _fail(f'{kind} table does not match the model', errors=_table_errors(spec, cfg, expected))
  missing, mismatched, leaves, used = [], [], {}, set()
  for ours, hf, codec in _slots(spec, cfg):
    key = _strip(hf)
    if key not in sd:
      missing.append(hf)
      continue
    used.add(key)
    want = _hf_shape(codec, [_leaf_shape(expected, leaf) for leaf in ours])
    if sd[key].shape != want:
      mismatched.append(f'{hf} {tuple(sd[key].shape)} != expected {want}')
      continue
    leaves.update(zip(ours, codec.split(sd[key])))
  untied = []
  for alias, main in spec.tied.items():
    a, m = _strip(alias), _strip(main)
    if a in sd:
      used.add(a)
      if m in sd and (sd[a].shape != sd[m].shape or not np.array_equal(sd[a], sd[m])):
        untied.append(f'{alias} != {main}')
  unexpected = sorted(set(sd) - used)
  _fail(
    f'Cannot load {kind} state dict into {cfg}',
    missing=missing,
    unexpected=unexpected,
    shape_mismatch=mismatched,
    untied_weights=untied,
  )

  dtype = jnp.dtype(cfg.param_dtype)
  flat = {}
  for (path, i), v in leaves.items():
    if i is None:
      flat[path] = np.asarray(v, dtype)
    elif i == 0:  # scanned: stack all layers once
      flat[path] = np.stack([leaves[(path, j)] for j in range(cfg.num_layers)]).astype(dtype)
  return traverse_util.unflatten_dict(flat, sep='/')


def to_hf(kind: str, params, cfg: M.ModelConfig) -> StateDict:
  """The HF state dict (full names, tied aliases included, as `model.state_dict()` has them)."""
  spec = _spec(kind)
  _check_cfg(kind, cfg)
  if set(params) == {'params'}:
    params = params['params']
  flat = traverse_util.flatten_dict(params, sep='/')
  expected = _expected_shapes(spec, cfg)
  _fail(f'{kind} table does not match the model', errors=_table_errors(spec, cfg, expected))
  _fail(
    f'Params do not match {cfg}',
    missing=sorted(set(expected) - set(flat)),
    unexpected=sorted(set(flat) - set(expected)),
    shape_mismatch=[
      f'{p} {tuple(np.shape(flat[p]))} != expected {s}'
      for p, s in expected.items()
      if p in flat and np.shape(flat[p]) != s
    ],
  )
  flat = {k: np.asarray(v) for k, v in flat.items()}
  out = {}
  for ours, hf, codec in _slots(spec, cfg):
    out[hf] = np.ascontiguousarray(
      codec.join([flat[p] if i is None else flat[p][i] for p, i in ours])
    )
  out.update({alias: out[main] for alias, main in spec.tied.items()})
  return out


def bert_from_hf(state_dict, cfg: M.ModelConfig) -> dict:
  return from_hf('bert', state_dict, cfg)


def bert_to_hf(params, cfg: M.ModelConfig) -> StateDict:
  return to_hf('bert', params, cfg)


def gpt2_from_hf(state_dict, cfg: M.ModelConfig) -> dict:
  return from_hf('gpt2', state_dict, cfg)


def gpt2_to_hf(params, cfg: M.ModelConfig) -> StateDict:
  return to_hf('gpt2', params, cfg)


# ------------------------------------------------------------------------------------------------
# Directories.


def import_pretrained(directory, **overrides: Any) -> tuple[str, M.ModelConfig, dict]:
  """(kind, cfg, params) from a local HF model directory. `overrides` replace ModelConfig fields
  that do not change the math (scan_layers, dtype, remat, attention_impl, dropout...)."""
  directory = pathlib.Path(directory)
  kind, cfg = config_from_hf(json.loads((directory / 'config.json').read_text()))
  cfg = dataclasses.replace(cfg, **overrides)
  return kind, cfg, from_hf(kind, load_state_dict(directory), cfg)


def export_pretrained(
  kind: str, cfg: M.ModelConfig, params, directory, **hf_overrides: Any
) -> None:
  """config.json + model.safetensors that `transformers.AutoModel*.from_pretrained` loads; tied
  aliases are left out as `save_pretrained` does. `hf_overrides` go into config.json."""
  import safetensors.numpy  # pylint: disable=import-outside-toplevel

  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  sd = {k: v for k, v in to_hf(kind, params, cfg).items() if k not in _spec(kind).tied}
  config = config_to_hf(kind, cfg, **hf_overrides)
  (directory / 'config.json').write_text(json.dumps(config, indent=2) + '\n')
  safetensors.numpy.save_file(sd, str(directory / 'model.safetensors'), metadata={'format': 'pt'})
