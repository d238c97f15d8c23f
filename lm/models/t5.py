"""T5 encoder-decoder (v1.0 and v1.1) as a pure Flax Linen module.

Reuses `lm.models.layers`', RMSNorm, logical axis names and KV-cache update. What is T5's own:
a learned bias per relative-position bucket (bidirectional in the encoder, causal in the decoder;
one table per stack, owned by the stack and shared by its layers: HF keeps it in layer 0), no
1/sqrt(d) on the scores (T5 folds it into the query init), biasless pre-norm layers, a ReLU MLP
(v1.0) or a gated-GELU one (v1.1: gelu_tanh(x W_gate) * x W_i), cross-attention whose encoder
keys/values are computed once per generation and cached, and a tied output layer that rescales
the decoder output by d_model**-0.5 (v1.0) or an untied lm_head (v1.1).

Initialisation follows T5 (Mesh TensorFlow / HF `_init_weights`), with `initializer_range` as
T5's `initializer_factor`: the std of each kernel is factor * fan_in**-0.5, the query's also
carries the 1 / sqrt(d_kv) the scores leave out.
"""

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


from lm.models import layers as M
from lm.models import lora
from lm.models.config import T5Config

Array = jax.Array


def _normal(std, *names):
  return nn.with_logical_partitioning(nn.initializers.normal(std), names)


def relative_bucket(rel: Array, bidirectional: bool, num_buckets: int, max_distance: int) -> Array:
  """T5's bucket of relative position key - query: exact below num_buckets / 2 (per direction),
  then logarithmic up to max_distance, the same float32 ops as Mesh TF and HF."""
  out = jnp.zeros_like(rel)
  if bidirectional:
    num_buckets //= 2
    out = (rel > 0).astype(rel.dtype) * num_buckets
    n = jnp.abs(rel)
  else:
    n = -jnp.minimum(rel, 0)
  exact = num_buckets // 2
  log = jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / exact) / math.log(max_distance / exact)
  large = jnp.minimum(exact + (log * (num_buckets - exact)).astype(rel.dtype), num_buckets - 1)
  return out + jnp.where(n < exact, n, large)


class Attention(M.Attention):
  """T5 attention: unscaled scores plus a position bias; `kv` given: cross-attention on it.

  Decoding: self-attention extends `lm.model.Attention`'s KV cache; cross-attention computes the
  encoder keys/values on the call that passes `kv` (the prefill) and reads them back after.
  """

  cross: bool = False

  @nn.compact
  def __call__(self, x, bias, mask, deterministic: bool, decode: bool = False, kv=None):
    c = self.cfg
    h, dh, d = c.num_heads, c.head_dim, c.hidden_size
    cross = self.cross
    causal = self.causal and not decode
    proj = (
      lambda y, std, name: M.constrain(
        lora.Dense(
          h * dh,
          c,
          name[0],  # 'q', 'k', 'v'
          ('embed', 'heads'),
          kernel_init=nn.initializers.normal(c.initializer_range * std),
          name=name,
        )(y, deterministic).reshape(y.shape[:2] + (h, dh)),
        *M.ACT_HEADS,
      )
    )
    q = proj(x, (d * dh) ** -0.5, 'query')
    if cross and decode:
      k_cache = self.variable('cache', 'cross_key', lambda: proj(kv, d**-0.5, 'key'))
      v_cache = self.variable('cache', 'cross_value', lambda: proj(kv, d**-0.5, 'value'))
      if kv is not None and not self.is_initializing():
        k_cache.value, v_cache.value = proj(kv, d**-0.5, 'key'), proj(kv, d**-0.5, 'value')
      k, v = k_cache.value, v_cache.value
    else:
      src = kv if cross else x
      k, v = proj(src, d**-0.5, 'key'), proj(src, d**-0.5, 'value')
      if decode:  # the cache applies causality per slot
        k, v, mask, _ = self._update_cache(k, v, mask)
    dropout = None
    if not deterministic and c.attention_dropout_rate > 0.0:
      dropout = nn.Dropout(c.attention_dropout_rate)
    out = M.dot_product_attention(
      q, k, v, mask, c, causal=causal, bias=bias, scale=1.0, dropout=dropout, decode=decode
    )
    out = M.constrain(out, *M.ACT_HEADS)
    return lora.Dense(
      d,
      c,
      'o',
      ('heads', 'embed'),
      kernel_init=nn.initializers.normal(c.initializer_range * (h * dh) ** -0.5),
      name='out',
    )(out.reshape(out.shape[:2] + (-1,)), deterministic)


class Mlp(nn.Module):
  """wo(act(wi x)) (v1.0), or wo(act(wi_gate x) * wi x) (v1.1), with T5's init."""

  cfg: T5Config

  @nn.compact
  def __call__(self, x, deterministic: bool):
    c = self.cfg
    dense = lambda size, fan_in, target, axes, name, y: lora.Dense(
      size,
      c,
      target,
      axes,
      kernel_init=nn.initializers.normal(c.initializer_range * fan_in**-0.5),
      name=name,
    )(y, deterministic)
    wi = lambda name: dense(c.mlp_dim, c.hidden_size, 'mlp_in', ('embed', 'mlp'), name, x)
    act = M.activation_fn(c.activation)
    h = act(wi('wi_gate')) * wi('wi') if c.mlp == 'gated' else act(wi('wi'))
    h = M.constrain(h, 'batch', 'act_length', 'act_mlp')
    h = nn.Dropout(c.dropout_rate)(h, deterministic=deterministic)
    return dense(c.hidden_size, c.mlp_dim, 'mlp_out', ('mlp', 'embed'), 'wo', h)


class Block(nn.Module):
  """Pre-norm residual sublayers: self-attention, cross-attention (decoder), MLP."""

  cfg: T5Config
  decoder: bool = False

  @nn.compact
  def __call__(self, x, bias, mask, encoded, encoder_mask, deterministic, decode):
    c = self.cfg
    drop = lambda y: nn.Dropout(c.dropout_rate)(y, deterministic=deterministic)
    norm = lambda name: M.LayerNorm(c, name=name)(x)
    self_attn = Attention(c, causal=self.decoder, name='attention')
    x = x + drop(self_attn(norm('ln_attention'), bias, mask, deterministic, decode))
    if self.decoder:
      cross = Attention(c, cross=True, name='cross_attention')
      x = x + drop(cross(norm('ln_cross'), None, encoder_mask, deterministic, decode, encoded))
    x = x + drop(Mlp(c, name='mlp')(norm('ln_mlp'), deterministic))
    x = M.constrain(x, 'batch', 'act_length', 'act_embed')
    return (x, None) if c.scan_layers else x


class Stack(nn.Module):
  """Encoder or decoder layers, the stack's relative-position table and its final norm.

  In decode mode the decoder keeps its next position and the number of cache slots in the
  'cache' collection, so a step needs only its new tokens.
  """

  cfg: T5Config
  decoder: bool = False

  @nn.compact
  def __call__(self, x, mask, encoded, encoder_mask, deterministic, decode=False):
    c = self.cfg
    t = x.shape[1]
    q_pos = k_pos = jnp.arange(t)
    if decode:
      slots = self.variable('cache', 'slots', jnp.zeros, (t,), bool).value  # its length only
      index = self.variable('cache', 'position', lambda: jnp.array(0, jnp.int32))
      if not self.is_initializing():
        q_pos, k_pos = index.value + jnp.arange(t), jnp.arange(slots.shape[0])
        index.value += t
    table = nn.Embed(
      c.relative_buckets,
      c.num_heads,
      dtype=jnp.float32,
      param_dtype=c.param_dtype,
      embedding_init=_normal(
        c.initializer_range * c.hidden_size**-0.5, 'relpos_buckets', 'relpos_heads'
      ),
      name='relative_bias',
    )
    buckets = relative_bucket(
      k_pos[None, :] - q_pos[:, None],
      not self.decoder,
      c.relative_buckets,
      c.relative_max_distance,
    )
    bias = jnp.transpose(table(buckets), (2, 0, 1))[None]  # [1, H, Tq, Tk]
    drop = lambda y: nn.Dropout(c.dropout_rate)(y, deterministic=deterministic)
    x = drop(x)
    n = c.decoder_layers if self.decoder else c.num_layers
    args = (bias, mask, encoded, encoder_mask, deterministic, decode)
    x = M.run_layers(Block, c, n, x, *args, decoder=self.decoder)
    return drop(M.LayerNorm(c, name='ln_final')(x))


class T5(nn.Module):
  """T5ForConditionalGeneration: shared token embedding, encoder, decoder, LM head."""

  cfg: T5Config
  encoder_decoder = True  # lm.generate's marker

  def setup(self):
    c = self.cfg
    self.embed = nn.Embed(
      c.vocab_size,
      c.hidden_size,
      dtype=c.dtype,
      param_dtype=c.param_dtype,
      embedding_init=_normal(c.initializer_range, 'vocab', 'embed'),
    )
    self.encoder = Stack(c)
    self.decoder = Stack(c, decoder=True)
    if not c.tie_embeddings:
      self.lm_head = nn.Dense(
        c.vocab_size,
        use_bias=False,
        dtype=c.dtype,
        param_dtype=c.param_dtype,
        kernel_init=_normal(c.initializer_range * c.hidden_size**-0.5, 'embed', 'vocab'),
      )

  def _embed(self, ids):
    return M.constrain(self.embed(ids), 'batch', 'act_length', 'act_embed')

  def encode(self, input_ids, attention_mask=None, deterministic=True):
    """Encoder output [B, S, D]; attention_mask: 1 = real token."""
    return self.encoder(
      self._embed(input_ids), M.make_mask(attention_mask), None, None, deterministic
    )

  def hidden(
    self,
    decoder_input_ids,
    encoded: Optional[Array],
    attention_mask=None,
    decoder_attention_mask=None,
    deterministic=True,
    decode=False,
  ):
    """Decoder output [B, T, D]. attention_mask: the encoder's padding. With decode=True,
    `encoded` is needed on the first call only (its keys/values are cached) and
    decoder_attention_mask covers all cache slots."""
    return self.decoder(
      self._embed(decoder_input_ids),
      M.make_mask(decoder_attention_mask),
      encoded,
      M.make_mask(attention_mask),
      deterministic,
      decode,
    )

  def logits(self, hidden):
    c = self.cfg
    if c.tie_embeddings:
      return self.embed.attend((hidden * c.hidden_size**-0.5).astype(c.dtype)).astype(jnp.float32)
    return self.lm_head(hidden.astype(c.dtype)).astype(jnp.float32)

  def __call__(
    self,
    input_ids,
    decoder_input_ids=None,
    attention_mask=None,
    decoder_attention_mask=None,
    deterministic=True,
    decode=False,
  ):
    """Logits [B, T, V] of the decoder; decoder_input_ids default to input_ids (init only)."""
    encoded = self.encode(input_ids, attention_mask, deterministic)
    dec = input_ids if decoder_input_ids is None else decoder_input_ids
    return self.logits(
      self.hidden(dec, encoded, attention_mask, decoder_attention_mask, deterministic, decode)
    )


def shift_right(labels: Array, start_id: int = 0) -> Array:
  """Decoder inputs from targets (teacher forcing): the start token, then targets[:-1]."""
  return jnp.concatenate([jnp.full_like(labels[:, :1], start_id), labels[:, :-1]], axis=1)
