"""HF `LlamaForCausalLM`, `MistralForCausalLM` and `Qwen2ForCausalLM` <-> `lm.models.Decoder`: one
table for the three (they share tensor names) and each family's config spelling, beside the
generic converter in `lm.hf.core`."""

from lm import models as M
from lm.hf.core import LINEAR, Rule, Spec, dense, emb


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


def _check_llama(kind: str, cfg: M.ModelConfig) -> list:
  """LlamaConfig has one switch for the attention biases and one for the MLP's, no 'qkv'."""
  if kind == 'llama' and cfg.bias not in ('none', 'all'):
    return [f"bias={cfg.bias!r} (needs 'none' or 'all')"]
  return []


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
      emb('embed/token', 'model.embed_tokens'),
      Rule(('ln_final/scale',), 'model.norm.weight'),
      Rule(('lm_head/kernel',), 'lm_head.weight', LINEAR, lambda cfg: not cfg.tie_embeddings),
    ],
    layer_prefix='model.layers.{i}.',
    layer=[
      Rule(('ln_attention/scale',), 'input_layernorm.weight'),
      *dense('attention/query', 'self_attn.q_proj', bias=some_bias),
      *dense('attention/key', 'self_attn.k_proj', bias=some_bias),
      *dense('attention/value', 'self_attn.v_proj', bias=some_bias),
      *dense('attention/out', 'self_attn.o_proj', bias=all_bias),
      Rule(('ln_mlp/scale',), 'post_attention_layernorm.weight'),
      *dense('mlp/wi_gate', 'mlp.gate_proj', bias=all_bias),
      *dense('mlp/wi', 'mlp.up_proj', bias=all_bias),
      *dense('mlp/wo', 'mlp.down_proj', bias=all_bias),
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
    check_extra=lambda cfg: _check_llama(kind, cfg),
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
