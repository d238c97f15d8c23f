"""HF `T5ForConditionalGeneration` <-> `lm.models.T5`: the encoder and decoder tables and the T5
config mapping, beside the generic converter in `lm.hf.core`."""

from lm import models as M
from lm.hf.core import ACTIVATIONS, HF_ACTIVATION, LINEAR, Rule, Spec, emb


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
  if gated not in ('', 'gated') or act not in ACTIVATIONS:
    bad.append(f'feed_forward_proj={d["feed_forward_proj"]!r} (supported: [gated-]{{relu,gelu}})')
    act = 'relu'
  layers = d.get('num_decoder_layers') or d['num_layers']
  return dict(
    mlp='gated' if gated else 'dense',
    activation='gelu_tanh' if d['feed_forward_proj'] == 'gated-gelu' else ACTIVATIONS[act],
    num_decoder_layers=0 if layers == d['num_layers'] else layers,
    tie_embeddings=bool(d.get('scale_decoder_outputs', d.get('tie_word_embeddings', True))),
  ), bad


def _write_t5(cfg) -> dict:
  act = 'gelu' if cfg.mlp == 'gated' and cfg.activation == 'gelu_tanh' else None
  act = act or HF_ACTIVATION[cfg.activation]
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
  module=M.T5,
  architecture='T5ForConditionalGeneration',
  prefix='',
  top=[
    emb('embed', 'shared'),
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
  config_cls=M.T5Config,
)
