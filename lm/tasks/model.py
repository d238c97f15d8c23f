"""The fine-tuning model: a pretrained Encoder/Decoder body with one linear task head."""

import flax.linen as nn
import jax.numpy as jnp

from lm import model as M


class TaskModel(nn.Module):
  """Encoder/Decoder body (params under 'body') + a linear head (params under 'head').

  head: 'pooled' -> [B, num_outputs]; 'tokens' -> [B, T, num_outputs]; 'span' -> [B, T, 2]
  start/end logits. pooling (head 'pooled'): 'pooler' = BERT's tanh pooler on [CLS] (Encoder) or
  the last real token (Decoder); 'mean' = mean of the final hidden states over real tokens,
  which carries more than an NSP-trained pooler after a short pretraining run."""

  cfg: M.ModelConfig
  kind: str
  head: str
  num_outputs: int
  pooling: str = 'pooler'

  @nn.compact
  def __call__(self, input_ids, token_type_ids=None, attention_mask=None, deterministic=True):
    c = self.cfg
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if self.kind == 'encoder':
      hidden, pooled = M.Encoder(c, name='body').encode(
        input_ids, token_type_ids, attention_mask, deterministic
      )
    elif self.kind == 'decoder':
      hidden = M.Decoder(c, name='body').hidden(
        input_ids, attention_mask=attention_mask, deterministic=deterministic
      )
      last = jnp.maximum(jnp.sum(attention_mask, -1) - 1, 0)
      pooled = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    else:
      raise ValueError(f'body kind {self.kind!r}: use encoder or decoder.')
    if self.pooling == 'mean':
      m = attention_mask.astype(hidden.dtype)[..., None]
      pooled = jnp.sum(hidden * m, 1) / jnp.maximum(jnp.sum(m, 1), 1.0)
    elif self.pooling != 'pooler':
      raise ValueError(f"pooling={self.pooling!r}: use 'pooler' or 'mean'.")
    n = 2 if self.head == 'span' else self.num_outputs
    dense = nn.Dense(
      n,
      dtype=c.dtype,
      param_dtype=c.param_dtype,
      name='head',
      kernel_init=nn.with_logical_partitioning(
        nn.initializers.normal(c.initializer_range), ('embed', 'classes')
      ),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ('classes',)),
    )
    drop = nn.Dropout(c.dropout_rate)
    if self.head == 'pooled':
      return dense(drop(pooled, deterministic=deterministic)).astype(jnp.float32)
    if self.head in ('tokens', 'span'):
      return dense(drop(hidden, deterministic=deterministic)).astype(jnp.float32)
    raise ValueError(f'head {self.head!r}: use pooled, tokens or span.')


def init_inputs(max_len: int):
  ids = jnp.zeros((1, max_len), jnp.int32)
  return ids, ids, jnp.ones((1, max_len), jnp.int32)
