"""HF `BertForPreTraining` <-> `lm.models.Encoder`: the BERT table and config mapping, beside the
generic converter in `lm.hf.core`."""

from lm import models as M
from lm.hf.core import CLASSIC, Rule, Spec, StateDict, dense, emb, from_hf, norm, to_hf

BERT = Spec(
  module=M.Encoder,
  architecture='BertForPreTraining',
  prefix='bert.',
  top=[
    emb('embed/token', 'bert.embeddings.word_embeddings'),
    emb('embed/position', 'bert.embeddings.position_embeddings'),
    emb('embed/segment', 'bert.embeddings.token_type_embeddings'),
    *norm('embed/ln', 'bert.embeddings.LayerNorm'),
    *dense('pooler', 'bert.pooler.dense'),
    *dense('mlm_dense', 'cls.predictions.transform.dense'),
    *norm('mlm_ln', 'cls.predictions.transform.LayerNorm'),
    Rule(('mlm_bias',), 'cls.predictions.bias'),
    *dense('nsp', 'cls.seq_relationship'),
  ],
  layer_prefix='bert.encoder.layer.{i}.',
  layer=[
    *dense('attention/query', 'attention.self.query'),
    *dense('attention/key', 'attention.self.key'),
    *dense('attention/value', 'attention.self.value'),
    *dense('attention/out', 'attention.output.dense'),
    *norm('ln_attention', 'attention.output.LayerNorm'),
    *dense('mlp/wi', 'intermediate.dense'),
    *dense('mlp/wo', 'output.dense'),
    *norm('ln_mlp', 'output.LayerNorm'),
  ],
  tied={
    'cls.predictions.decoder.weight': 'bert.embeddings.word_embeddings.weight',
    'cls.predictions.decoder.bias': 'cls.predictions.bias',
  },
  fixed=dict(pre_ln=False, position='learned', **CLASSIC),
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
  check_extra=lambda cfg: (
    [] if cfg.type_vocab_size else ['type_vocab_size=0 (BERT needs token type embeddings)']
  ),
)


def bert_from_hf(state_dict, cfg: M.ModelConfig) -> dict:
  return from_hf('bert', state_dict, cfg)


def bert_to_hf(params, cfg: M.ModelConfig) -> StateDict:
  return to_hf('bert', params, cfg)
