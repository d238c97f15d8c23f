"""BERT-style encoder and GPT-style decoder as pure functional Flax Linen modules.

One `Block` serves both: `pre_ln` picks GPT-2 (pre-LN, final LayerNorm) or BERT
(post-LN, LayerNorm after the embeddings) placement, `causal` picks the mask.
Every parameter carries logical axis names and every large activation a logical
constraint; `lm.sharding.RULES` maps those names onto the device mesh.
"""

import dataclasses
import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  max_len: int = 512
  type_vocab_size: int = 2  # segment (token type) embeddings; 0 disables them
  position: str = 'learned'  # 'learned' | 'rope'
  rope_theta: float = 10000.0
  pre_ln: bool = False  # False: BERT post-LN; True: GPT-2 pre-LN
  activation: str = 'gelu'  # 'gelu' (erf, BERT) | 'gelu_tanh' (GPT-2 "gelu_new")
  layer_norm_eps: float = 1e-12
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  initializer_range: float = 0.02
  dtype: str = 'float32'  # compute dtype; parameters stay in param_dtype
  param_dtype: str = 'float32'
  scan_layers: bool = False  # one compiled layer body: compile time flat in depth
  remat: str = 'none'  # 'none' | 'full' | 'dots' (save matmul outputs only)
  # 'einsum' | 'xla' | 'cudnn' (jax.nn.dot_product_attention) | 'auto': cudnn flash attention
  # on a GPU in bf16/fp16, else xla
  attention_impl: str = 'einsum'

  @classmethod
  def from_dict(cls, d) -> 'ModelConfig':
    d = dict(d)
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(
        f'Unknown model config keys {sorted(unknown)}; valid keys: '
        f'{sorted(f.name for f in dataclasses.fields(cls))}.'
      )
    return cls(**d)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


def _init(cfg: ModelConfig, *names):
  return nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range), names)


def _zeros(*names):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def _ones(*names):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), names)


def _constrain(x, *names):
  return nn.with_logical_constraint(x, names)


def _activation(name):
  return {
    'gelu': functools.partial(jax.nn.gelu, approximate=False),
    'gelu_tanh': functools.partial(jax.nn.gelu, approximate=True),
    'relu': jax.nn.relu,
  }[name]


def LayerNorm(c: ModelConfig, name: Optional[str] = None) -> nn.LayerNorm:  # pylint: disable=invalid-name
  return nn.LayerNorm(
    epsilon=c.layer_norm_eps,
    dtype=c.dtype,
    param_dtype=c.param_dtype,
    scale_init=_ones('embed'),
    bias_init=_zeros('embed'),
    name=name,
  )


def rope(x: Array, positions: Array, theta: float) -> Array:
  """Rotary embedding on [B, T, H, D] with the half-split (GPT-NeoX / Llama) layout."""
  d = x.shape[-1] // 2
  freq = theta ** (-jnp.arange(d, dtype=jnp.float32) / d)
  angle = positions[..., None].astype(jnp.float32) * freq  # [B, T, d]
  sin, cos = jnp.sin(angle)[:, :, None], jnp.cos(angle)[:, :, None]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


class Attention(nn.Module):
  """Multi-head self-attention; `decode=True` reads and extends a KV cache.

  `causal` is applied here rather than folded into `mask`, so fused kernels (cuDNN flash
  attention) get `is_causal` and skip the masked half instead of reading a [T, T] mask.
  """

  cfg: ModelConfig
  causal: bool = False

  @nn.compact
  def __call__(self, x, mask, positions, deterministic: bool, decode: bool = False):
    c = self.cfg
    # Flat [D, H*Dh] kernels (HF's layout); sharding the flat axis on 'tensor' splits whole heads.
    dense = functools.partial(
      nn.Dense,
      c.num_heads * c.head_dim,
      dtype=c.dtype,
      param_dtype=c.param_dtype,
      kernel_init=_init(c, 'embed', 'heads'),
      bias_init=_zeros('heads'),
    )
    split = lambda y: y.reshape(y.shape[:2] + (c.num_heads, c.head_dim))
    q, k, v = (
      _constrain(split(dense(name=n)(x)), 'batch', 'act_length', 'act_heads', 'act_kv')
      for n in ('query', 'key', 'value')
    )
    if c.position == 'rope':
      q, k = rope(q, positions, c.rope_theta), rope(k, positions, c.rope_theta)
    causal = self.causal
    if decode:  # the cache applies causality per slot
      k, v, mask = self._update_cache(k, v, mask)
      causal = False

    impl = c.attention_impl
    if impl == 'auto':
      impl = (
        'cudnn' if jax.default_backend() == 'gpu' and c.dtype in ('bfloat16', 'float16') else 'xla'
      )
    if impl != 'einsum' and (deterministic or c.attention_dropout_rate == 0.0):
      out = jax.nn.dot_product_attention(
        q, k, v, mask=mask, is_causal=causal, implementation=None if impl == 'xla' else impl
      )
    else:
      if causal:
        tri = jnp.tril(jnp.ones((q.shape[1], k.shape[1]), bool))[None, None]
        mask = tri if mask is None else mask & tri
      scores = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32) / jnp.sqrt(c.head_dim)
      if mask is not None:
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
      probs = jax.nn.softmax(scores, axis=-1).astype(c.dtype)
      probs = nn.Dropout(c.attention_dropout_rate)(probs, deterministic=deterministic)
      out = jnp.einsum('bhqk,bkhd->bqhd', probs, v)
    out = _constrain(out, 'batch', 'act_length', 'act_heads', 'act_kv')
    return nn.Dense(
      c.hidden_size,
      dtype=c.dtype,
      param_dtype=c.param_dtype,
      kernel_init=_init(c, 'heads', 'embed'),
      bias_init=_zeros('embed'),
      name='out',
    )(out.reshape(out.shape[:2] + (-1,)))

  def _update_cache(self, k, v, mask):
    """Writes k, v at the cache index and masks each query to the slots up to its own.

    `mask` (padding over all cache slots, or None) comes from the caller. The cache has a
    fixed length, so every decode step costs the same whatever its position.
    """
    shape = k.shape  # the first (init) call sizes the cache: [B, max_length, H, D]
    ck = self.variable('cache', 'cached_key', jnp.zeros, shape, k.dtype)
    cv = self.variable('cache', 'cached_value', jnp.zeros, shape, v.dtype)
    idx = self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))
    if self.is_initializing():
      return k, v, mask
    i = idx.value
    ck.value = jax.lax.dynamic_update_slice(ck.value, k.astype(ck.value.dtype), (0, i, 0, 0))
    cv.value = jax.lax.dynamic_update_slice(cv.value, v.astype(cv.value.dtype), (0, i, 0, 0))
    idx.value = i + k.shape[1]
    slots = jnp.arange(ck.value.shape[1])
    causal = (slots[None, :] <= i + jnp.arange(k.shape[1])[:, None])[None, None]
    return ck.value, cv.value, causal if mask is None else mask & causal


class Mlp(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, deterministic: bool):
    c = self.cfg
    h = nn.Dense(
      c.mlp_dim,
      dtype=c.dtype,
      param_dtype=c.param_dtype,
      kernel_init=_init(c, 'embed', 'mlp'),
      bias_init=_zeros('mlp'),
      name='wi',
    )(x)
    h = _constrain(_activation(c.activation)(h), 'batch', 'act_length', 'act_mlp')
    h = nn.Dense(
      c.hidden_size,
      dtype=c.dtype,
      param_dtype=c.param_dtype,
      kernel_init=_init(c, 'mlp', 'embed'),
      bias_init=_zeros('embed'),
      name='wo',
    )(h)
    return nn.Dropout(c.dropout_rate)(h, deterministic=deterministic)


class Block(nn.Module):
  cfg: ModelConfig
  causal: bool = False

  @nn.compact
  def __call__(self, x, mask, positions, deterministic: bool, decode: bool = False):
    c = self.cfg
    drop = lambda y: nn.Dropout(c.dropout_rate)(y, deterministic=deterministic)
    attn = lambda y: drop(
      Attention(c, self.causal, name='attention')(y, mask, positions, deterministic, decode)
    )
    if c.pre_ln:
      x = x + attn(LayerNorm(c, name='ln_attention')(x))
      x = x + Mlp(c, name='mlp')(LayerNorm(c, name='ln_mlp')(x), deterministic)
    else:
      x = LayerNorm(c, name='ln_attention')(x + attn(x))
      x = LayerNorm(c, name='ln_mlp')(x + Mlp(c, name='mlp')(x, deterministic))
    x = _constrain(x, 'batch', 'act_length', 'act_embed')
    return (x, None) if c.scan_layers else x


_REMAT_POLICIES = {
  'full': None,
  'dots': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Stack(nn.Module):
  """The layer stack: a Python loop, or `nn.scan` (params stacked on a 'layers' axis)."""

  cfg: ModelConfig
  causal: bool = False

  @nn.compact
  def __call__(self, x, mask, positions, deterministic: bool, decode: bool = False):
    c = self.cfg
    block = Block
    if c.remat != 'none':
      block = nn.remat(
        block, policy=_REMAT_POLICIES[c.remat], prevent_cse=not c.scan_layers, static_argnums=(4, 5)
      )  # deterministic, decode (self counts as 0)
    if c.scan_layers:
      scanned = nn.scan(
        block,
        variable_axes={'params': 0, 'cache': 0},
        split_rngs={'params': True, 'dropout': True},
        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
        length=c.num_layers,
        metadata_params={nn.PARTITION_NAME: 'layers'},
      )
      x, _ = scanned(c, self.causal, name='layers')(x, mask, positions, deterministic, decode)
      return x
    for i in range(c.num_layers):
      x = block(c, self.causal, name=f'layers_{i}')(x, mask, positions, deterministic, decode)
    return x


class Embed(nn.Module):
  """Token (+ learned position, + segment) embeddings; `attend` is the tied output layer."""

  cfg: ModelConfig

  def setup(self):
    c = self.cfg
    emb = functools.partial(nn.Embed, dtype=c.dtype, param_dtype=c.param_dtype)
    self.token = emb(c.vocab_size, c.hidden_size, embedding_init=_init(c, 'vocab', 'embed'))
    if c.position == 'learned':
      self.position = emb(c.max_len, c.hidden_size, embedding_init=_init(c, 'position', 'embed'))
    if c.type_vocab_size:
      self.segment = emb(
        c.type_vocab_size, c.hidden_size, embedding_init=_init(c, 'type_vocab', 'embed')
      )
    if not c.pre_ln:
      self.ln = LayerNorm(c)
    self.dropout = nn.Dropout(c.dropout_rate)

  def __call__(self, input_ids, positions, token_type_ids, deterministic: bool):
    c = self.cfg
    x = self.token(input_ids)
    if c.position == 'learned':
      x = x + self.position(positions)
    if c.type_vocab_size:
      x = x + self.segment(jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids)
    if not c.pre_ln:
      x = self.ln(x)
    return _constrain(
      self.dropout(x, deterministic=deterministic), 'batch', 'act_length', 'act_embed'
    )

  def attend(self, x):
    return self.token.attend(x.astype(self.cfg.dtype)).astype(jnp.float32)


def make_mask(attention_mask=None, segment_ids=None):
  """Boolean [B, 1, Tq, Tk] mask from padding (1 = real token) and packed segments.

  Returns None when nothing is masked, so attention skips the `where`.
  """
  mask = None
  if attention_mask is not None:
    mask = attention_mask[:, None, None, :].astype(bool)
  if segment_ids is not None:
    seg = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
    mask = seg if mask is None else mask & seg
  return mask


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
      kernel_init=_init(c, 'embed', 'mlp'),
      bias_init=_zeros('mlp'),
    )
    self.mlm_dense = nn.Dense(
      c.hidden_size,
      dtype=c.dtype,
      param_dtype=c.param_dtype,
      kernel_init=_init(c, 'embed', 'mlp'),
      bias_init=_zeros('mlp'),
    )
    self.mlm_ln = LayerNorm(c)
    self.mlm_bias = self.param('mlm_bias', _zeros('vocab'), (c.vocab_size,), c.param_dtype)
    self.nsp = nn.Dense(
      2,
      dtype=c.dtype,
      param_dtype=c.param_dtype,
      kernel_init=_init(c, 'mlp', 'classes'),
      bias_init=_zeros('classes'),
    )

  def encode(self, input_ids, token_type_ids=None, attention_mask=None, deterministic=True):
    """Returns (hidden [B, T, D], pooled [B, D]): the body fine-tuning heads sit on."""
    positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
    x = self.embed(input_ids, positions, token_type_ids, deterministic)
    mask = make_mask(attention_mask)
    x = self.stack(x, mask, positions, deterministic)
    if self.cfg.pre_ln:
      x = self.ln_final(x)
    pooled = _constrain(jnp.tanh(self.pooler(x[:, 0])), 'batch', 'act_embed')
    return x, pooled

  def mlm_logits(self, hidden):
    # Constraints here are load-bearing: without them XLA's CPU partitioner picked layouts
    # that gave wrong gradients on a (2, 2, 2) mesh (jax 0.9-0.10; see tests/test_train.py).
    hidden = _constrain(hidden, 'batch', 'act_length', 'act_embed')
    h = _constrain(
      _activation(self.cfg.activation)(self.mlm_dense(hidden)), 'batch', 'act_length', 'act_embed'
    )
    return (
      self.embed.attend(_constrain(self.mlm_ln(h), 'batch', 'act_length', 'act_embed'))
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


class Decoder(nn.Module):
  """GPT-2: causal pre-LN stack with a final LayerNorm and a tied LM head."""

  cfg: ModelConfig

  def setup(self):
    c = self.cfg
    self.embed = Embed(c)
    self.stack = Stack(c, causal=True)
    self.ln_final = LayerNorm(c)

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
    return _constrain(self.ln_final(x), 'batch', 'act_length', 'act_embed')

  def logits(self, hidden):
    return self.embed.attend(hidden)

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
