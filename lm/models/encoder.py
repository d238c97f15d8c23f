"""BERT: a bidirectional post-LN (or pre-LN) stack with pooler, tied MLM head and NSP head."""

import flax.linen as nn
import jax.numpy as jnp

from lm.models.config import ModelConfig
from lm.models.layers import (
  Embed,
  LayerNorm,
  Stack,
  activation_fn,
  constrain,
  dense_init,
  make_mask,
  zeros_init,
)


class Encoder(nn.Module):
  """BERT: bidirectional stack with pooler, MLM head (tied) and NSP head."""

  cfg: ModelConfig

  def setup(self):
    c = self.cfg
    self.embed = Embed(c)
    self.stack = Stack(c)
    if c.pre_ln:
      self.ln_final = LayerNorm(c)
    self.pooler = nn.Dense(
      c.hidden_size,
      dtype=c.dtype,
      param_dtype=c.param_dtype,
      kernel_init=dense_init(c, 'embed', 'mlp'),
      bias_init=zeros_init('mlp'),
    )
    self.mlm_dense = nn.Dense(
      c.hidden_size,
      dtype=c.dtype,
      param_dtype=c.param_dtype,
      kernel_init=dense_init(c, 'embed', 'mlp'),
      bias_init=zeros_init('mlp'),
    )
    self.mlm_ln = LayerNorm(c)
    self.mlm_bias = self.param('mlm_bias', zeros_init('vocab'), (c.vocab_size,), c.param_dtype)
    self.nsp = nn.Dense(
      2,
      dtype=c.dtype,
      param_dtype=c.param_dtype,
      kernel_init=dense_init(c, 'mlp', 'classes'),
      bias_init=zeros_init('classes'),
    )

  def encode(self, input_ids, token_type_ids=None, attention_mask=None, deterministic=True):
    """Returns (hidden [B, T, D], pooled [B, D]): the body fine-tuning heads sit on."""
    positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
    x = self.embed(input_ids, positions, token_type_ids, deterministic)
    mask = make_mask(attention_mask)
    x = self.stack(x, mask, positions, deterministic)
    if self.cfg.pre_ln:
      x = self.ln_final(x)
    pooled = constrain(jnp.tanh(self.pooler(x[:, 0])), 'batch', 'act_embed')
    return x, pooled

  def mlm_logits(self, hidden):
    # Constraints here are load-bearing: without them XLA's CPU partitioner picked layouts
    # that gave wrong gradients on a (2, 2, 2) mesh (jax 0.9-0.10; see tests/test_train.py).
    hidden = constrain(hidden, 'batch', 'act_length', 'act_embed')
    h = constrain(
      activation_fn(self.cfg.activation)(self.mlm_dense(hidden)), 'batch', 'act_length', 'act_embed'
    )
    return (
      self.embed.attend(constrain(self.mlm_ln(h), 'batch', 'act_length', 'act_embed'))
      + self.mlm_bias
    )

  def __call__(
    self,
    input_ids,
    token_type_ids=None,
    attention_mask=None,
    masked_positions=None,
    deterministic=True,
  ):
    """MLM logits at `masked_positions` [B, P] only (the vocab projection dominates the FLOPs),
    or at every position when they are None; NSP logits from the pooled [CLS]."""
    hidden, pooled = self.encode(input_ids, token_type_ids, attention_mask, deterministic)
    if masked_positions is not None:
      hidden = jnp.take_along_axis(hidden, masked_positions[..., None], axis=1)
    return {
      'mlm_logits': self.mlm_logits(hidden),
      'nsp_logits': self.nsp(pooled).astype(jnp.float32),
    }
