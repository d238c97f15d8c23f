"""The heads jobs put on a body: a task head (fine-tuning: classification, tagging, QA spans), a
reward model (a scalar on the last real token) and an actor-critic (the decoder plus a value per
position, for PPO). Each keeps its body's params under one name, so a body restores into it and
comes out of it unchanged."""

import flax.linen as nn
import jax.numpy as jnp

from lm.models.config import ModelConfig
from lm.models.decoder import Decoder
from lm.models.encoder import Encoder


def _dense_head(cfg: ModelConfig, n: int, name=None) -> nn.Dense:
  """The one head initialisation: normal(initializer_range) kernel, zero bias, logical axes."""
  return nn.Dense(
    n,
    dtype=cfg.dtype,
    param_dtype=cfg.param_dtype,
    name=name,
    kernel_init=nn.with_logical_partitioning(
      nn.initializers.normal(cfg.initializer_range), ('embed', 'classes')
    ),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ('classes',)),
  )


def _last_real(hidden, attention_mask):
  """[B, D]: each row's hidden state at its last real (mask 1) token."""
  last = jnp.maximum(jnp.sum(attention_mask, axis=-1) - 1, 0)
  return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]


class TaskModel(nn.Module):
  """Encoder/Decoder body (params under 'body') + a linear head (params under 'head').

  head: 'pooled' -> [B, num_outputs]; 'tokens' -> [B, T, num_outputs]; 'span' -> [B, T, 2]
  start/end logits. pooling (head 'pooled'): 'pooler' = BERT's tanh pooler on [CLS] (Encoder) or
  the last real token (Decoder); 'mean' = mean of the final hidden states over real tokens,
  which carries more than an NSP-trained pooler after a short pretraining run."""

  cfg: ModelConfig
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
      hidden, pooled = Encoder(c, name='body').encode(
        input_ids, token_type_ids, attention_mask, deterministic
      )
    elif self.kind == 'decoder':
      hidden = Decoder(c, name='body').hidden(
        input_ids, attention_mask=attention_mask, deterministic=deterministic
      )
      pooled = _last_real(hidden, attention_mask)
    else:
      raise ValueError(f'body kind {self.kind!r}: use encoder or decoder.')
    if self.pooling == 'mean':
      m = attention_mask.astype(hidden.dtype)[..., None]
      pooled = jnp.sum(hidden * m, 1) / jnp.maximum(jnp.sum(m, 1), 1.0)
    elif self.pooling != 'pooler':
      raise ValueError(f"pooling={self.pooling!r}: use 'pooler' or 'mean'.")
    dense = _dense_head(c, 2 if self.head == 'span' else self.num_outputs, name='head')
    drop = nn.Dropout(c.dropout_rate)
    if self.head == 'pooled':
      return dense(drop(pooled, deterministic=deterministic)).astype(jnp.float32)
    if self.head in ('tokens', 'span'):
      return dense(drop(hidden, deterministic=deterministic)).astype(jnp.float32)
    raise ValueError(f'head {self.head!r}: use pooled, tokens or span.')


class RewardModel(nn.Module):
  """The decoder with a scalar head on the hidden state of each row's last real token."""

  cfg: ModelConfig

  def setup(self):
    self.decoder = Decoder(self.cfg)
    self.head = _dense_head(self.cfg, 1)

  def __call__(self, input_ids, attention_mask=None, deterministic=True):
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    h = self.decoder.hidden(input_ids, attention_mask=attention_mask, deterministic=deterministic)
    return self.head(_last_real(h, attention_mask))[:, 0].astype(jnp.float32)


class ActorCritic(nn.Module):
  """The decoder (params under 'decoder', a plain `Decoder` for generation) plus a scalar value
  head on every hidden state (used by 'ppo' only)."""

  cfg: ModelConfig

  def setup(self):
    self.decoder = Decoder(self.cfg)
    self.value_head = _dense_head(self.cfg, 1)

  def __call__(self, ids, positions=None, attention_mask=None, n: int = 0):
    """(logits [B, n, V], values [B, n]) at the n positions that predict the last n tokens
    (all T - 1 predicting positions when n == 0)."""
    h = self.decoder.hidden(ids, positions, attention_mask=attention_mask)
    h = h[:, -n - 1 : -1] if n else h[:, :-1]
    return self.decoder.logits(h), self.value_head(h)[..., 0].astype(jnp.float32)


def task_init_inputs(max_len: int):
  ids = jnp.zeros((1, max_len), jnp.int32)
  return ids, ids, jnp.ones((1, max_len), jnp.int32)


def reward_init_inputs(seq_len: int):
  ids = jnp.zeros((1, seq_len), jnp.int32)
  return (ids, jnp.ones_like(ids))


def policy_init_inputs(seq_len: int):
  """A decoder's (or an ActorCritic's) init inputs."""
  return (jnp.zeros((1, seq_len), jnp.int32),)
