"""HF `GPT2LMHeadModel` <-> `lm.models.Decoder`: the GPT-2 table and config mapping, beside the
generic converter in `lm.hf.core`."""

from lm import models as M
from lm.hf.core import CLASSIC, QKV, SAME, Spec, StateDict, dense, emb, from_hf, norm, to_hf

GPT2 = Spec(
  module=M.Decoder,
  architecture='GPT2LMHeadModel',
  prefix='transformer.',
  top=[
    emb('embed/token', 'transformer.wte'),
    emb('embed/position', 'transformer.wpe'),
    *norm('ln_final', 'transformer.ln_f'),
  ],
  layer_prefix='transformer.h.{i}.',
  layer=[
    *norm('ln_attention', 'ln_1'),  # Conv1D weights are already [in, out]: SAME
    *dense(('attention/query', 'attention/key', 'attention/value'), 'attn.c_attn', QKV),
    *dense('attention/out', 'attn.c_proj', SAME),
    *norm('ln_mlp', 'ln_2'),
    *dense('mlp/wi', 'mlp.c_fc', SAME),
    *dense('mlp/wo', 'mlp.c_proj', SAME),
  ],
  tied={'lm_head.weight': 'transformer.wte.weight'},
  fixed=dict(pre_ln=True, position='learned', type_vocab_size=0, **CLASSIC),
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
  write_last=lambda cfg: dict(embd_pdrop=cfg.dropout_rate),  # one dropout rate here
)


def gpt2_from_hf(state_dict, cfg: M.ModelConfig) -> dict:
  return from_hf('gpt2', state_dict, cfg)


def gpt2_to_hf(params, cfg: M.ModelConfig) -> StateDict:
  return to_hf('gpt2', params, cfg)
