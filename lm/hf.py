"""HuggingFace interop: BERT (`BertForPreTraining`), GPT-2 (`GPT2LMHeadModel`), the Llama
family (`LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`) and T5
(`T5ForConditionalGeneration`) checkpoints.

Each model is one table of (our param paths, HF tensor name, codec) rules; the per-layer part is
written once per stack (T5 has two) and expanded per layer, stacking on a leading axis when
`cfg.scan_layers`. Both
directions check the table against the model's own parameter shapes (`jax.eval_shape` of init),
so a missing, unexpected or mis-shaped tensor raises a ValueError naming every offender instead
of silently loading part of a checkpoint.

Needs no transformers; torch only to read `pytorch_model.bin`.
"""

import dataclasses
import json
import pathlib
import re
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import traverse_util

from lm import model as M
from lm import t5 as T5M

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
  when: Callable[[M.ModelConfig], bool] = lambda cfg: True  # the tensor exists in this config


def _dense(ours, hf, codec=LINEAR, bias=lambda cfg: True):
  """A Dense layer (or fused Dense layers: `ours` a tuple) <-> HF `.weight` / `.bias`; `bias`
  says for which configs the bias exists."""
  mods = (ours,) if isinstance(ours, str) else ours
  return [
    Rule(tuple(f'{m}/kernel' for m in mods), f'{hf}.weight', codec),
    Rule(tuple(f'{m}/bias' for m in mods), f'{hf}.bias', QKV if codec is QKV else SAME, bias),
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
  activation_key: Optional[str]  # None: `read_extra` sets the activation
  hf_defaults: dict  # HF class defaults: saved configs omit some keys
  hf_allowed: dict  # HF config key -> values we can reproduce (first = assumed when absent)
  hf_extra: dict  # written on export
  # Config keys beyond the 1:1 table: HF dict -> (ModelConfig fields, problems), and back.
  read_extra: Callable[[dict], tuple] = lambda d: ({}, [])
  write_extra: Callable[[M.ModelConfig], dict] = lambda cfg: {}
  imported: dict = dataclasses.field(default_factory=dict)  # set on import, ignored on export
  config_cls: type = M.ModelConfig
  # (our stack path, HF layer prefix, layer rules, layer count); () = one stack: 'stack', the
  # `layer_prefix` and `layer` rules, cfg.num_layers layers
  stacks: tuple = ()
  aliases: dict = dataclasses.field(default_factory=dict)  # HF alias -> name, tied in any config
  # HF name -> the name read when the file lacks it (a tied tensor save_pretrained left out)
  fallback: dict = dataclasses.field(default_factory=dict)


# What BERT and GPT-2 cannot express: the Llama-family options at their classic values.
_CLASSIC = dict(
  norm='layernorm', mlp='dense', bias='all', tie_embeddings=True, num_kv_heads=0, sliding_window=0
)


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
  fixed=dict(pre_ln=False, position='learned', **_CLASSIC),
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
  fixed=dict(pre_ln=True, position='learned', type_vocab_size=0, **_CLASSIC),
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
  write_extra=lambda cfg: (
    # HF's default bos/eos (50256) would point outside a smaller vocab
    dict(bos_token_id=None, eos_token_id=None) if cfg.vocab_size <= 50256 else {}
  ),
)


def _read_llama(kind: str, d: dict) -> tuple[dict, list]:
  """GQA, RoPE (the v5 `rope_parameters` or the hub's `rope_theta` + `rope_scaling`), biases and
  the sliding window, which each family spells its own way."""
  fields, bad = {}, []
  heads = d['num_attention_heads']
  kv = d.get('num_key_value_heads') or heads
  fields['num_kv_heads'] = 0 if kv == heads else kv
  if d.get('head_dim') not in (None, d['hidden_size'] // heads):
    bad.append(f'head_dim={d["head_dim"]} (supported: hidden_size / num_attention_heads)')
  rope = d.get('rope_parameters') or {**(d.get('rope_scaling') or {})}
  fields['rope_theta'] = float(rope.get('rope_theta', d.get('rope_theta', 10000.0)))
  rope_type = rope.get('rope_type', rope.get('type', 'default'))
  if rope_type == 'linear':
    fields.update(rope_scaling='linear', rope_factor=float(rope['factor']))
  elif rope_type == 'llama3':
    fields.update(
      rope_scaling='llama3',
      rope_factor=float(rope['factor']),
      rope_low_freq_factor=float(rope['low_freq_factor']),
      rope_high_freq_factor=float(rope['high_freq_factor']),
      rope_original_max_len=int(rope['original_max_position_embeddings']),
    )
  elif rope_type != 'default':
    bad.append(f'rope_type={rope_type!r} (supported: default, linear, llama3)')
  if rope.get('partial_rotary_factor', 1.0) != 1.0:
    bad.append(f'partial_rotary_factor={rope["partial_rotary_factor"]} (supported: 1.0)')
  if kind == 'llama':
    if d.get('attention_bias', False) != d.get('mlp_bias', False):
      bad.append('attention_bias != mlp_bias (supported: both or neither)')
    fields['bias'] = 'all' if d.get('attention_bias') else 'none'
  if kind == 'mistral':
    fields['sliding_window'] = d.get('sliding_window') or 0
  if kind == 'qwen2' and (
    d.get('use_sliding_window') or set(d.get('layer_types') or ()) - {'full_attention'}
  ):
    bad.append('use_sliding_window=True (supported: False)')
  return fields, bad


def _write_llama(kind: str, cfg: M.ModelConfig) -> dict:
  """The hub's spelling (`rope_theta` + `rope_scaling`), which transformers 4 and 5 both read."""
  scaling = None
  if cfg.rope_scaling == 'linear':
    scaling = dict(rope_type='linear', factor=cfg.rope_factor)
  elif cfg.rope_scaling == 'llama3':
    scaling = dict(
      rope_type='llama3',
      factor=cfg.rope_factor,
      low_freq_factor=cfg.rope_low_freq_factor,
      high_freq_factor=cfg.rope_high_freq_factor,
      original_max_position_embeddings=cfg.rope_original_max_len,
    )
  d = dict(
    num_key_value_heads=cfg.kv_heads,
    head_dim=cfg.head_dim,
    rope_theta=cfg.rope_theta,
    rope_scaling=scaling,
  )
  if kind == 'llama':
    d.update(attention_bias=cfg.bias == 'all', mlp_bias=cfg.bias == 'all')
  if kind == 'mistral':
    d['sliding_window'] = cfg.sliding_window or None
  if kind == 'qwen2':
    d.update(use_sliding_window=False, sliding_window=None)
  return d


def _llama_family(kind: str, architecture: str, defaults: dict, **fixed) -> Spec:
  """Llama, Mistral and Qwen2 checkpoints share names; they differ in biases, the window and the
  config keys `_read_llama` handles."""
  some_bias = lambda cfg: cfg.bias != 'none'
  all_bias = lambda cfg: cfg.bias == 'all'
  return Spec(
    module=M.Decoder,
    architecture=architecture,
    prefix='model.',
    top=[
      _emb('embed/token', 'model.embed_tokens'),
      Rule(('ln_final/scale',), 'model.norm.weight'),
      Rule(('lm_head/kernel',), 'lm_head.weight', LINEAR, lambda cfg: not cfg.tie_embeddings),
    ],
    layer_prefix='model.layers.{i}.',
    layer=[
      Rule(('ln_attention/scale',), 'input_layernorm.weight'),
      *_dense('attention/query', 'self_attn.q_proj', bias=some_bias),
      *_dense('attention/key', 'self_attn.k_proj', bias=some_bias),
      *_dense('attention/value', 'self_attn.v_proj', bias=some_bias),
      *_dense('attention/out', 'self_attn.o_proj', bias=all_bias),
      Rule(('ln_mlp/scale',), 'post_attention_layernorm.weight'),
      *_dense('mlp/wi_gate', 'mlp.gate_proj', bias=all_bias),
      *_dense('mlp/wi', 'mlp.up_proj', bias=all_bias),
      *_dense('mlp/wo', 'mlp.down_proj', bias=all_bias),
    ],
    tied={'lm_head.weight': 'model.embed_tokens.weight'},  # when tie_embeddings
    fixed=dict(
      pre_ln=True,
      position='rope',
      type_vocab_size=0,
      norm='rmsnorm',
      mlp='swiglu',
      activation='silu',
      **fixed,
    ),
    config=dict(
      vocab_size='vocab_size',
      hidden_size='hidden_size',
      num_layers='num_hidden_layers',
      num_heads='num_attention_heads',
      mlp_dim='intermediate_size',
      max_len='max_position_embeddings',
      layer_norm_eps='rms_norm_eps',
      attention_dropout_rate='attention_dropout',
      initializer_range='initializer_range',
      tie_embeddings='tie_word_embeddings',
    ),
    activation_key='hidden_act',
    hf_defaults=dict(  # the transformers 5 class defaults: saved configs may omit them
      hidden_act='silu',
      initializer_range=0.02,
      rms_norm_eps=1e-6,
      tie_word_embeddings=False,
      attention_dropout=0.0,
      **defaults,
    ),
    hf_allowed=dict(hidden_act=('silu',), pretraining_tp=(1, None)),
    hf_extra={},
    read_extra=lambda d: _read_llama(kind, d),
    write_extra=lambda cfg: _write_llama(kind, cfg),
    imported=dict(dropout_rate=0.0),  # HF's Llama family has attention dropout only
  )


def _sizes(vocab, hidden, mlp, layers, heads, kv_heads, max_len) -> dict:
  return dict(
    vocab_size=vocab,
    hidden_size=hidden,
    intermediate_size=mlp,
    num_hidden_layers=layers,
    num_attention_heads=heads,
    num_key_value_heads=kv_heads,
    max_position_embeddings=max_len,
  )


LLAMA = _llama_family(
  'llama', 'LlamaForCausalLM', _sizes(32000, 4096, 11008, 32, 32, None, 2048), sliding_window=0
)
MISTRAL = _llama_family(
  'mistral',
  'MistralForCausalLM',
  dict(_sizes(32000, 4096, 14336, 32, 32, 8, 4096 * 32), sliding_window=4096),
  bias='none',
)
QWEN2 = _llama_family(
  'qwen2',
  'Qwen2ForCausalLM',
  _sizes(151936, 4096, 22016, 32, 32, 32, 32768),
  bias='qkv',
  sliding_window=0,
)


def _t5_attention(ours, hf):
  return [
    Rule((f'{ours}/{a}/kernel',), f'{hf}.{b}.weight', LINEAR)
    for a, b in (('query', 'q'), ('key', 'k'), ('value', 'v'), ('out', 'o'))
  ]


def _t5_layer(decoder: bool) -> list:
  mlp = 'layer.2' if decoder else 'layer.1'
  gated = lambda cfg: cfg.mlp == 'gated'
  cross = [
    *_t5_attention('cross_attention', 'layer.1.EncDecAttention'),
    Rule(('ln_cross/scale',), 'layer.1.layer_norm.weight'),
  ]
  return [
    *_t5_attention('attention', 'layer.0.SelfAttention'),
    Rule(('ln_attention/scale',), 'layer.0.layer_norm.weight'),
    *(cross if decoder else []),
    Rule(('mlp/wi/kernel',), f'{mlp}.DenseReluDense.wi.weight', LINEAR, lambda c: not gated(c)),
    Rule(('mlp/wi_gate/kernel',), f'{mlp}.DenseReluDense.wi_0.weight', LINEAR, gated),
    Rule(('mlp/wi/kernel',), f'{mlp}.DenseReluDense.wi_1.weight', LINEAR, gated),
    Rule(('mlp/wo/kernel',), f'{mlp}.DenseReluDense.wo.weight', LINEAR),
    Rule(('ln_mlp/scale',), f'{mlp}.layer_norm.weight'),
  ]


def _read_t5(d: dict) -> tuple[dict, list]:
  """feed_forward_proj ('relu', 'gated-gelu', ...) and whether the output layer is tied (v5
  configs say it as scale_decoder_outputs, hub files as tie_word_embeddings)."""
  gated, _, act = d['feed_forward_proj'].rpartition('-')
  bad = []
  if gated not in ('', 'gated') or act not in _ACTIVATIONS:
    bad.append(f'feed_forward_proj={d["feed_forward_proj"]!r} (supported: [gated-]{{relu,gelu}})')
    act = 'relu'
  layers = d.get('num_decoder_layers') or d['num_layers']
  return dict(
    mlp='gated' if gated else 'dense',
    activation='gelu_tanh' if d['feed_forward_proj'] == 'gated-gelu' else _ACTIVATIONS[act],
    num_decoder_layers=0 if layers == d['num_layers'] else layers,
    tie_embeddings=bool(d.get('scale_decoder_outputs', d.get('tie_word_embeddings', True))),
  ), bad


def _write_t5(cfg) -> dict:
  act = 'gelu' if cfg.mlp == 'gated' and cfg.activation == 'gelu_tanh' else None
  act = act or _HF_ACTIVATION[cfg.activation]
  return dict(
    feed_forward_proj=f'gated-{act}' if cfg.mlp == 'gated' else act,
    num_decoder_layers=cfg.decoder_layers,
    tie_word_embeddings=cfg.tie_embeddings,
    is_encoder_decoder=True,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
  )


T5 = Spec(
  module=T5M.T5,
  architecture='T5ForConditionalGeneration',
  prefix='',
  top=[
    _emb('embed', 'shared'),
    *(
      Rule(
        (f'{s}/relative_bias/embedding',),
        f'{s}.block.0.layer.0.SelfAttention.relative_attention_bias.weight',
      )
      for s in ('encoder', 'decoder')
    ),
    *(
      Rule((f'{s}/ln_final/scale',), f'{s}.final_layer_norm.weight') for s in ('encoder', 'decoder')
    ),
    Rule(('lm_head/kernel',), 'lm_head.weight', LINEAR, lambda cfg: not cfg.tie_embeddings),
  ],
  layer_prefix='',
  layer=[],
  stacks=(
    ('encoder', 'encoder.block.{i}.', _t5_layer(False), lambda cfg: cfg.num_layers),
    ('decoder', 'decoder.block.{i}.', _t5_layer(True), lambda cfg: cfg.decoder_layers),
  ),
  tied={'lm_head.weight': 'shared.weight'},
  aliases={
    'encoder.embed_tokens.weight': 'shared.weight',
    'decoder.embed_tokens.weight': 'shared.weight',
  },
  fallback={'lm_head.weight': 'shared.weight'},
  fixed=dict(position='relative', pre_ln=True, type_vocab_size=0, norm='rmsnorm', bias='none'),
  config=dict(
    vocab_size='vocab_size',
    hidden_size='d_model',
    num_layers='num_layers',
    num_heads='num_heads',
    mlp_dim='d_ff',
    d_kv='d_kv',
    relative_buckets='relative_attention_num_buckets',
    relative_max_distance='relative_attention_max_distance',
    layer_norm_eps='layer_norm_epsilon',
    dropout_rate='dropout_rate',
    initializer_range='initializer_factor',
  ),
  activation_key=None,
  hf_defaults=dict(
    vocab_size=32128,
    d_model=512,
    d_kv=64,
    d_ff=2048,
    num_layers=6,
    num_heads=8,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    dropout_rate=0.1,
    layer_norm_epsilon=1e-6,
    initializer_factor=1.0,
    feed_forward_proj='relu',
  ),
  hf_allowed=dict(
    is_encoder_decoder=(True,), is_decoder=(False,), decoder_start_token_id=(0, None)
  ),
  hf_extra={},
  read_extra=_read_t5,
  write_extra=_write_t5,
  config_cls=T5M.T5Config,
)

SPECS = {'bert': BERT, 'gpt2': GPT2, 'llama': LLAMA, 'mistral': MISTRAL, 'qwen2': QWEN2, 't5': T5}

# HF activation -> ours (exact equivalents only), and back.
_ACTIVATIONS = {
  'gelu': 'gelu',
  'gelu_new': 'gelu_tanh',
  'gelu_pytorch_tanh': 'gelu_tanh',
  'relu': 'relu',
}
_ACTIVATIONS['silu'] = 'silu'
_HF_ACTIVATION = {'gelu': 'gelu', 'gelu_tanh': 'gelu_new', 'relu': 'relu', 'silu': 'silu'}


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
  act = d[spec.activation_key] if spec.activation_key else 'relu'
  if act not in _ACTIVATIONS:
    bad.append(f'{spec.activation_key}={act!r} (supported: {sorted(_ACTIVATIONS)})')
  extra, extra_bad = spec.read_extra(d)
  bad += extra_bad
  if bad:
    raise ValueError(f'Unsupported {kind} config: {"; ".join(bad)}.')
  fields = {ours: d[theirs] for ours, theirs in spec.config.items()}
  if fields['mlp_dim'] is None:  # GPT-2 n_inner
    fields['mlp_dim'] = 4 * fields['hidden_size']
  fields = {**fields, 'activation': _ACTIVATIONS[act], **spec.fixed, **spec.imported, **extra}
  return kind, spec.config_cls(**fields)


def config_to_hf(kind: str, cfg: M.ModelConfig, **hf_overrides: Any) -> dict:
  """config.json contents for `kind`'s HF architecture; `hf_overrides` set what ModelConfig does
  not know (bos/eos/pad token ids, ...)."""
  spec = _spec(kind)
  _check_cfg(kind, cfg)
  d = {
    'architectures': [spec.architecture],
    'model_type': kind,
    **{theirs: getattr(cfg, ours) for ours, theirs in spec.config.items()},
    **({spec.activation_key: _HF_ACTIVATION[cfg.activation]} if spec.activation_key else {}),
    **spec.hf_extra,
    **spec.write_extra(cfg),
    'dtype': str(cfg.param_dtype),
  }
  if kind == 'gpt2':
    d['embd_pdrop'] = cfg.dropout_rate  # one dropout rate here
  return {**d, **hf_overrides}


def _check_cfg(kind: str, cfg: M.ModelConfig):
  """Configs the HF architecture cannot express (RoPE, pre-LN BERT, ...)."""
  spec = _spec(kind)
  bad = [
    f'{k}={getattr(cfg, k)!r} (needs {v!r})' for k, v in spec.fixed.items() if getattr(cfg, k) != v
  ]
  if kind == 'bert' and not cfg.type_vocab_size:
    bad.append('type_vocab_size=0 (BERT needs token type embeddings)')
  if kind == 'llama' and cfg.bias not in ('none', 'all'):
    bad.append(f"bias={cfg.bias!r} (needs 'none' or 'all')")
  if cfg.activation not in _HF_ACTIVATION:
    bad.append(f'activation={cfg.activation!r}')
  if bad:
    raise ValueError(f'ModelConfig not expressible as HF {kind}: {"; ".join(bad)}.')


# ------------------------------------------------------------------------------------------------
# State dicts.

_BUFFERS = re.compile(
  r'(^|\.)(position_ids|token_type_ids|attn\.bias|attn\.masked_bias|rotary_emb\.inv_freq)$'
)


def _strip(name: str) -> str:
  for p in (BERT.prefix, GPT2.prefix, LLAMA.prefix):
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


_SAFETENSORS_DTYPES = {
  'F64': np.float64,
  'F32': np.float32,
  'F16': np.float16,
  'BF16': ml_dtypes.bfloat16,
  'I64': np.int64,
  'I32': np.int32,
  'I16': np.int16,
  'I8': np.int8,
  'U8': np.uint8,
  'BOOL': np.bool_,
}


def _load_safetensors(path: pathlib.Path) -> dict:
  """The file's tensors as read-only memory maps (nothing is read until used). Parsed here rather
  than by safetensors.numpy, which cannot name bfloat16, the dtype of most Llama-family files."""
  with open(path, 'rb') as f:
    n = int.from_bytes(f.read(8), 'little')
    header = json.loads(f.read(n))
  data = np.memmap(path, np.uint8, 'r', offset=8 + n)
  return {
    k: data[t['data_offsets'][0] : t['data_offsets'][1]]
    .view(_SAFETENSORS_DTYPES[t['dtype']])
    .reshape(t['shape'])
    for k, t in header.items()
    if k != '__metadata__'
  }


def _load_file(path: pathlib.Path) -> dict:
  if path.suffix == '.safetensors':
    return _load_safetensors(path)
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
    if r.when(cfg):
      yield tuple((p, None) for p in r.ours), r.hf, r.codec
  stacks = spec.stacks or (('stack', spec.layer_prefix, spec.layer, lambda cfg: cfg.num_layers),)
  for stack, prefix, rules, count in stacks:
    for i in range(count(cfg)):
      leaf = (
        (lambda p: (f'{stack}/layers/{p}', i))
        if cfg.scan_layers
        else (lambda p: (f'{stack}/layers_{i}/{p}', None))
      )
      for r in rules:
        if r.when(cfg):
          yield tuple(map(leaf, r.ours)), prefix.format(i=i) + r.hf, r.codec


def _tied(spec: Spec, cfg: M.ModelConfig) -> dict:
  return {**spec.aliases, **(spec.tied if cfg.tie_embeddings else {})}


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
    if key not in sd and _strip(spec.fallback.get(hf, hf)) in sd:
      key = _strip(spec.fallback[hf])
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
  for alias, main in _tied(spec, cfg).items():
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
    elif i == 0:  # scanned: stack all layers of the stack once (T5's two may differ in depth)
      n = sum(p == path for p, _ in leaves)
      flat[path] = np.stack([leaves[(path, j)] for j in range(n)]).astype(dtype)
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
  out.update({alias: out[main] for alias, main in _tied(spec, cfg).items()})
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
  kind: str, cfg: M.ModelConfig, params, directory, max_shard_bytes: int = 0, **hf_overrides: Any
) -> None:
  """config.json + model.safetensors that `transformers.AutoModel*.from_pretrained` loads; tied
  aliases are left out as `save_pretrained` does. With `max_shard_bytes`, weights go into
  `model-0000i-of-0000n.safetensors` files of at most that size (a tensor larger than it gets a
  file of its own) and `model.safetensors.index.json`, as HF writes large models. `hf_overrides`
  go into config.json."""
  import safetensors.numpy  # pylint: disable=import-outside-toplevel

  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  tied = _tied(_spec(kind), cfg)
  sd = {k: v for k, v in to_hf(kind, params, cfg).items() if k not in tied}
  config = config_to_hf(kind, cfg, **hf_overrides)
  (directory / 'config.json').write_text(json.dumps(config, indent=2) + '\n')
  save = lambda part, name: safetensors.numpy.save_file(
    part, str(directory / name), metadata={'format': 'pt'}
  )
  if not max_shard_bytes:
    save(sd, 'model.safetensors')
    return
  shards = [{}]
  for k, v in sd.items():
    if shards[-1] and sum(x.nbytes for x in shards[-1].values()) + v.nbytes > max_shard_bytes:
      shards.append({})
    shards[-1][k] = v
  names = [f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors' for i in range(len(shards))]
  for part, name in zip(shards, names):
    save(part, name)
  index = dict(
    metadata=dict(total_size=sum(v.nbytes for v in sd.values())),
    weight_map={k: name for part, name in zip(shards, names) for k in part},
  )
  (directory / 'model.safetensors.index.json').write_text(json.dumps(index, indent=2) + '\n')
