"""GPT-2 / Llama / Mistral / Qwen2: one causal pre-LN `Decoder`, the family picked by config
options (`norm='rmsnorm'`, `mlp='swiglu'`, `position='rope'`, `num_kv_heads` < `num_heads` for
grouped-query attention, `tie_embeddings=False`, `bias='none'` or `'qkv'` (Qwen2) and, for
Mistral, a `sliding_window`), with a KV cache for generation."""

import flax.linen as nn
import jax.numpy as jnp

from lm.models.config import ModelConfig
from lm.models.layers import (
  Embed,
  LayerNorm,
  Stack,
  constrain,
  dense_init,
  make_mask,
)


class Decoder(nn.Module):
  """GPT-2 / Llama: causal pre-LN stack with a final norm and a tied (or untied) LM head."""

  cfg: ModelConfig

  def setup(self):
    c = self.cfg
    self.embed = Embed(c)
    self.stack = Stack(c, causal=True)
    self.ln_final = LayerNorm(c)
    if not c.tie_embeddings:
      self.lm_head = nn.Dense(
        c.vocab_size,
        use_bias=False,
        dtype=c.dtype,
        param_dtype=c.param_dtype,
        kernel_init=dense_init(c, 'embed', 'vocab'),
      )

  def hidden(
    self,
    input_ids,
    positions=None,
    segment_ids=None,
    attention_mask=None,
    deterministic=True,
    decode=False,
  ):
    """Final hidden states [B, T, D].

    segment_ids: packed documents (attention never crosses a segment; 0 is padding).
    attention_mask: padding, 1 = real token; with decode=True it covers all cache slots.
    """
    b, t = input_ids.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    x = self.embed(input_ids, positions, None, deterministic)
    if decode and segment_ids is not None:
      raise ValueError('decode=True does not take segment_ids: decode one sequence per row.')
    # Padding and segments only (with decode=True, padding over all cache slots): the stack
    # is causal itself.
    mask = make_mask(attention_mask, segment_ids)
    x = self.stack(x, mask, positions, deterministic, decode)
    return constrain(self.ln_final(x), 'batch', 'act_length', 'act_embed')

  def logits(self, hidden):
    if self.cfg.tie_embeddings:
      return self.embed.attend(hidden)
    return self.lm_head(hidden.astype(self.cfg.dtype)).astype(jnp.float32)

  def __call__(
    self,
    input_ids,
    positions=None,
    segment_ids=None,
    attention_mask=None,
    deterministic=True,
    decode=False,
  ):
    return self.logits(
      self.hidden(input_ids, positions, segment_ids, attention_mask, deterministic, decode)
    )
