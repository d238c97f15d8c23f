"""The layers every model family shares: norms, rotary positions, the one attention kernel
(`dot_product_attention`), `Attention` with its KV cache, `Mlp`, the pre/post-LN `Block`, the
layer loop (`run_layers`: Python loop or `nn.scan`, with `nn.remat`), `Embed` and masks.

Every parameter carries logical axis names and every large activation a logical constraint;
`lm.sharding.RULES` maps those names onto the device mesh.
"""

import functools
from typing import Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


from lm.models import context_parallel, kernels, lora
from lm.models.config import ModelConfig

Array = jax.Array


def dense_init(cfg: ModelConfig, *names):
  return nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range), names)


def zeros_init(*names):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def ones_init(*names):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), names)


def constrain(x, *names):
  return nn.with_logical_constraint(x, names)


ACT_HEADS = ('batch', 'act_length', 'act_heads', 'act_kv')
ACT_KV_HEADS = ('batch', 'act_length', 'act_kv_heads', 'act_kv')


def activation_fn(name):
  return {
    'gelu': functools.partial(jax.nn.gelu, approximate=False),
    'gelu_tanh': functools.partial(jax.nn.gelu, approximate=True),
    'relu': jax.nn.relu,
    'silu': jax.nn.silu,
  }[name]


def LayerNorm(c: ModelConfig, name: Optional[str] = None) -> nn.Module:  # pylint: disable=invalid-name
  """`c.norm`: LayerNorm, or RMSNorm (float32 statistics, as HF Llama computes them)."""
  if c.norm == 'rmsnorm':
    return nn.RMSNorm(
      epsilon=c.layer_norm_eps,
      dtype=c.dtype,
      param_dtype=c.param_dtype,
      scale_init=ones_init('embed'),
      name=name,
    )
  return nn.LayerNorm(
    epsilon=c.layer_norm_eps,
    dtype=c.dtype,
    param_dtype=c.param_dtype,
    use_bias=c.bias != 'none',
    scale_init=ones_init('embed'),
    bias_init=zeros_init('embed'),
    name=name,
  )


def rope_frequencies(c: ModelConfig) -> np.ndarray:
  """Inverse wavelengths [head_dim / 2] with `c.rope_scaling` applied (HF's rope_type formulas),
  computed once in float64 at trace time."""
  d = c.head_dim // 2
  freq = c.rope_theta ** (-np.arange(d) / d)
  if c.rope_scaling == 'linear':
    freq = freq / c.rope_factor
  elif c.rope_scaling == 'llama3':
    wavelen = 2 * np.pi / freq
    lo, hi = (
      c.rope_original_max_len / c.rope_low_freq_factor,
      c.rope_original_max_len / c.rope_high_freq_factor,
    )
    smooth = (c.rope_original_max_len / wavelen - c.rope_low_freq_factor) / (
      c.rope_high_freq_factor - c.rope_low_freq_factor
    )
    ramp = (1 - smooth) * freq / c.rope_factor + smooth * freq
    freq = np.where(wavelen > lo, freq / c.rope_factor, np.where(wavelen < hi, freq, ramp))
  elif c.rope_scaling != 'none':
    raise ValueError(f"rope_scaling={c.rope_scaling!r}: use 'none', 'linear' or 'llama3'.")
  return freq.astype(np.float32)


def rope(x: Array, positions: Array, freq) -> Array:
  """Rotary embedding on [B, T, H, D] with the half-split (GPT-NeoX / Llama) layout."""
  angle = positions[..., None].astype(jnp.float32) * freq  # [B, T, D / 2]
  sin, cos = jnp.sin(angle)[:, :, None], jnp.cos(angle)[:, :, None]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


def dot_product_attention(
  q: Array,
  k: Array,
  v: Array,
  mask,
  cfg: ModelConfig,
  *,
  causal: bool = False,
  window: int = 0,
  bias: Optional[Array] = None,
  scale: Optional[float] = None,
  dropout: Optional[nn.Module] = None,
  decode: bool = False,
) -> Array:
  """The attention kernel every attention layer calls (lm.model's and lm.t5's): softmax(scale *
  q k^T + bias, masked) v over q [B, Tq, H, Dh] and k, v [B, Tk, KV, Dh], KV dividing H
  (grouped-query attention: query head i reads kv head i // (H / KV)).

  `cfg.attention_impl` picks it: 'einsum' (float32 scores and softmax, written out here),
  `jax.nn.dot_product_attention` ('xla', 'cudnn'; 'auto': cudnn on a GPU in bf16/fp16, else
  xla), or a Pallas kernel of `lm.models.kernels` ('splash' on TPU, 'flash' on GPU; interpret
  mode on CPU) for self-attention without bias, window or dropout (other calls, such as a KV
  cache's, take the einsum path). mask: a `Mask` (padding and segments as ids), a bool array broadcastable to
  [B, H, Tq, Tk] (the KV cache's), or None; causal: query i sees keys <= i (fused kernels skip
  the masked half); window: query i sees keys j with i - j < window (0: all); bias: added to
  the scores ([1, H, Tq, Tk]: T5's relative positions); scale: None is 1 / sqrt(Dh). dropout:
  applied to the probabilities (an nn.Dropout, called in the caller's module); given, the
  einsum path runs whatever the impl, since the fused kernels have no dropout.

  When the mesh in scope has a `context` axis of size > 1, the sequence is sharded over it and
  `lm.models.context_parallel` computes attention (`cfg.context_parallel`: 'ring' or
  'allgather'), except on a KV cache's call (`decode`), which runs unsharded.
  """
  h, kv, dh = q.shape[2], k.shape[2], q.shape[3]
  if not decode and context_parallel.enabled():
    if dropout is not None:
      raise ValueError(
        'attention dropout is not implemented over a context axis: set '
        '--config.model.attention_dropout_rate=0 or use a mesh without one.'
      )
    q_ids, kv_ids = Mask.ids_of(mask, q.shape[:2], k.shape[:2])
    return context_parallel.attention(
      q,
      k,
      v,
      q_ids,
      kv_ids,
      causal=causal,
      window=window,
      bias=bias,
      scale=scale,
      schedule=cfg.context_parallel,
      dtype=jnp.dtype(cfg.dtype),
    )
  impl = cfg.attention_impl
  if impl in kernels.IMPLS:
    fused = not decode and bias is None and not window and dropout is None
    if fused and q.shape[1] == k.shape[1]:
      ids = None if mask is None else Mask.ids_of(mask, q.shape[:2], k.shape[:2])[1]
      # one id array for both sides: real queries see exactly the keys `Mask.dense` shows them
      return kernels.fused_attention(
        impl, q, k, v, causal=causal, segment_ids=ids, kv_segment_ids=ids, scale=scale
      )
    impl = 'einsum'
  mask = mask.dense() if isinstance(mask, Mask) else mask
  if window:  # key j is visible to query i when i - j < window
    band = (jnp.arange(q.shape[1])[:, None] - jnp.arange(k.shape[1]) < window)[None, None]
    mask = band if mask is None else mask & band
  if impl == 'auto':
    gpu_half = jax.default_backend() == 'gpu' and cfg.dtype in ('bfloat16', 'float16')
    impl = 'cudnn' if gpu_half else 'xla'
  if impl != 'einsum' and dropout is None:
    if bias is not None and impl == 'cudnn':
      bias = bias.astype(q.dtype)  # cuDNN takes the bias in the inputs' dtype
    return jax.nn.dot_product_attention(  # takes kv < h heads as grouped-query attention
      q,
      k,
      v,
      bias=bias,
      mask=mask,
      scale=scale,
      is_causal=causal,
      implementation=None if impl == 'xla' else impl,
    )
  if causal:
    tri = jnp.tril(jnp.ones((q.shape[1], k.shape[1]), bool))[None, None]
    mask = tri if mask is None else mask & tri
  # Query head i uses key/value head i // (h / kv), as HF's repeat_kv; no copy of k, v.
  qg = q.reshape(q.shape[:2] + (kv, h // kv, dh))
  scores = jnp.einsum('bqkgd,bskd->bkgqs', qg, k).astype(jnp.float32)
  scores = scores / jnp.sqrt(dh) if scale is None else scores * scale
  scores = scores.reshape((q.shape[0], h) + scores.shape[-2:])
  if bias is not None:
    scores = scores + bias
  if mask is not None:
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(cfg.dtype)
  if dropout is not None:
    probs = dropout(probs, deterministic=False)
  probs = probs.reshape((q.shape[0], kv, h // kv) + probs.shape[-2:])
  return jnp.einsum('bkgqs,bskd->bqkgd', probs, v).reshape(q.shape)


class Attention(nn.Module):
  """Multi-head (grouped-query when num_kv_heads < num_heads) self-attention; `decode=True`
  reads and extends a KV cache of the kv heads only.

  `causal` is applied here rather than folded into `mask`, so fused kernels (cuDNN flash
  attention) get `is_causal` and skip the masked half instead of reading a [T, T] mask.
  """

  cfg: ModelConfig
  causal: bool = False

  @nn.compact
  def __call__(self, x, mask, positions, deterministic: bool, decode: bool = False):
    c = self.cfg
    h, kv, dh = c.num_heads, c.kv_heads, c.head_dim
    # Flat [D, H*Dh] kernels (HF's layout); sharding the flat axis on 'tensor' splits whole heads.
    dense = lambda heads, axis, target, name: lora.Dense(
      heads * dh, c, target, ('embed', axis), use_bias=c.bias != 'none', name=name
    )(x, deterministic)
    q = constrain(dense(h, 'heads', 'q', 'query').reshape(x.shape[:2] + (h, dh)), *ACT_HEADS)
    k, v = (
      constrain(dense(kv, 'kv_heads', t, n).reshape(x.shape[:2] + (kv, dh)), *ACT_KV_HEADS)
      for t, n in (('k', 'key'), ('v', 'value'))
    )
    if c.position == 'rope':
      freq = rope_frequencies(c)
      q, k = rope(q, positions, freq), rope(k, positions, freq)
    causal, window = self.causal, c.sliding_window
    if decode:  # the cache applies causality (and the window) per slot
      k, v, mask, q_slots = self._update_cache(k, v, mask)
      causal = False
      if window:  # key j is visible to query i when i - j < sliding_window
        band = q_slots[..., :, None] - jnp.arange(k.shape[1]) < window  # [(B,) Tq, Tk]
        band = band[None, None] if band.ndim == 2 else band[:, None]
        mask = band if mask is None else mask & band
        window = 0

    dropout = None
    if not deterministic and c.attention_dropout_rate > 0.0:
      dropout = nn.Dropout(c.attention_dropout_rate)
    out = dot_product_attention(
      q, k, v, mask, c, causal=causal, window=window, dropout=dropout, decode=decode
    )
    out = constrain(out, *ACT_HEADS)
    return lora.Dense(
      c.hidden_size, c, 'o', ('heads', 'embed'), use_bias=c.bias == 'all', name='out'
    )(out.reshape(out.shape[:2] + (-1,)), deterministic)

  def _update_cache(self, k, v, mask):
    """Writes k, v at the cache index and masks each query to the slots up to its own.

    `mask` (padding over all cache slots, or None) comes from the caller. The cache has a
    fixed length, so every decode step costs the same whatever its position. Also returns
    the queries' slots (for the sliding window).

    A `cache_index` of shape [B] (lm.serving's slots) gives every row its own write index and
    causal horizon, so rows that hold unrelated sequences of different lengths never couple.
    """
    mask = mask.dense() if isinstance(mask, Mask) else mask
    shape = k.shape  # the first (init) call sizes the cache: [B, max_length, kv heads, D]
    ck = self.variable('cache', 'cached_key', jnp.zeros, shape, k.dtype)
    cv = self.variable('cache', 'cached_value', jnp.zeros, shape, v.dtype)
    idx = self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))
    q_slots = jnp.arange(k.shape[1])
    if self.is_initializing():
      return k, v, mask, q_slots
    i = idx.value
    if i.ndim:  # per-row indices: [B, Tq] query slots
      put = jax.vmap(lambda c, x, j: jax.lax.dynamic_update_slice(c, x.astype(c.dtype), (j, 0, 0)))
      q_slots = i[:, None] + q_slots
    else:
      put = lambda c, x, j: jax.lax.dynamic_update_slice(c, x.astype(c.dtype), (0, j, 0, 0))
      q_slots = i + q_slots
    ck.value, cv.value = put(ck.value, k, i), put(cv.value, v, i)
    idx.value = i + k.shape[1]
    causal = jnp.arange(ck.value.shape[1]) <= q_slots[..., None]  # [(B,) Tq, Tk]
    causal = causal[None, None] if causal.ndim == 2 else causal[:, None]
    return ck.value, cv.value, causal if mask is None else mask & causal, q_slots


class Mlp(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, deterministic: bool):
    c = self.cfg
    dense = lambda size, target, axes, name, y: lora.Dense(
      size, c, target, axes, use_bias=c.bias == 'all', name=name
    )(y, deterministic)
    h = dense(c.mlp_dim, 'mlp_in', ('embed', 'mlp'), 'wi', x)
    if c.mlp == 'swiglu':
      h = jax.nn.silu(dense(c.mlp_dim, 'mlp_in', ('embed', 'mlp'), 'wi_gate', x)) * h
    else:
      h = activation_fn(c.activation)(h)
    h = constrain(h, 'batch', 'act_length', 'act_mlp')
    h = dense(c.hidden_size, 'mlp_out', ('mlp', 'embed'), 'wo', h)
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
    x = constrain(x, 'batch', 'act_length', 'act_embed')
    return (x, None) if c.scan_layers else x


_REMAT_POLICIES = {
  'full': None,
  'dots': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def run_layers(block: type, cfg: ModelConfig, num_layers: int, x: Array, *args, **block_kwargs):
  """`x` through `num_layers` layers `block(cfg, **block_kwargs)(x, *args)`, `args` ending in
  (deterministic, decode): a Python loop (params under layers_{i}), or with `cfg.scan_layers`
  one `nn.scan` over them (params and cache stacked on a leading 'layers' axis, every arg
  broadcast; the block returns (x, None)); `cfg.remat` wraps each layer in `nn.remat` with its
  policy. The layers become submodules of the calling (compact) module: every stack uses this.
  """
  if cfg.remat != 'none':
    n = len(args)  # self is argument 0 and x 1: deterministic and decode are n and n + 1
    block = nn.remat(
      block,
      policy=_REMAT_POLICIES[cfg.remat],
      prevent_cse=not cfg.scan_layers,
      static_argnums=(n, n + 1),
    )
  if cfg.scan_layers:
    scanned = nn.scan(
      block,
      variable_axes={'params': 0, 'cache': 0},
      split_rngs={'params': True, 'dropout': True},
      in_axes=(nn.broadcast,) * len(args),
      length=num_layers,
      metadata_params={nn.PARTITION_NAME: 'layers'},
    )
    return scanned(cfg, **block_kwargs, name='layers')(x, *args)[0]
  for i in range(num_layers):
    x = block(cfg, **block_kwargs, name=f'layers_{i}')(x, *args)
  return x


class Stack(nn.Module):
  """The layer stack: a Python loop, or `nn.scan` (params stacked on a 'layers' axis)."""

  cfg: ModelConfig
  causal: bool = False

  @nn.compact
  def __call__(self, x, mask, positions, deterministic: bool, decode: bool = False):
    c = self.cfg
    return run_layers(
      Block, c, c.num_layers, x, mask, positions, deterministic, decode, causal=self.causal
    )


class Embed(nn.Module):
  """Token (+ learned position, + segment) embeddings; `attend` is the tied output layer."""

  cfg: ModelConfig

  def setup(self):
    c = self.cfg
    emb = functools.partial(nn.Embed, dtype=c.dtype, param_dtype=c.param_dtype)
    self.token = emb(c.vocab_size, c.hidden_size, embedding_init=dense_init(c, 'vocab', 'embed'))
    if c.position == 'learned':
      self.position = emb(
        c.max_len, c.hidden_size, embedding_init=dense_init(c, 'position', 'embed')
      )
    if c.type_vocab_size:
      self.segment = emb(
        c.type_vocab_size, c.hidden_size, embedding_init=dense_init(c, 'type_vocab', 'embed')
      )
    if not c.pre_ln:
      self.ln = LayerNorm(c)
    self.dropout = nn.Dropout(c.dropout_rate)

  def __call__(self, input_ids, positions, token_type_ids, deterministic: bool):
    c = self.cfg
    # the rows, then their dtype: nn.Embed widens the whole table first (a float32 copy of a
    # bf16 vocabulary, 0.55 GB for Qwen2-0.5B's)
    x = jnp.take(self.token.embedding, input_ids, axis=0).astype(c.dtype)
    if c.position == 'learned':
      x = x + self.position(positions)
    if c.type_vocab_size:
      x = x + self.segment(jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids)
    if not c.pre_ln:
      x = self.ln(x)
    return constrain(
      self.dropout(x, deterministic=deterministic), 'batch', 'act_length', 'act_embed'
    )

  def attend(self, x):
    c, table = self.cfg, self.token.embedding
    if jnp.dtype(table.dtype) == jnp.dtype(c.dtype):
      return self.token.attend(x.astype(c.dtype)).astype(jnp.float32)
    # a bf16 table under float32 compute: never a float32 copy of the whole table
    return lora.widened_attend(jnp.dtype(c.dtype), x.astype(c.dtype), table).astype(jnp.float32)


def output_embedding(params) -> Array:
  """A Decoder's output projection as [V, D] (the token embedding when tied)."""
  if 'lm_head' in params:
    return params['lm_head']['kernel'].T
  return params['embed']['token']['embedding']


@flax.struct.dataclass
class Mask:
  """Padding (1 = real key, [B, Tk]) and packed documents (segment ids, [B, T]), kept as ids.

  The einsum and `jax.nn` paths read the dense [B, 1, Tq, Tk] mask (`dense`); attention over
  a sequence sharded on the `context` axis and the fused kernels read ids (`ids_of`), so no
  device builds a [T, T] mask there.
  """

  padding: Optional[Array] = None
  segment_ids: Optional[Array] = None

  def dense(self) -> Optional[Array]:
    mask = None
    if self.padding is not None:
      mask = self.padding[:, None, None, :].astype(bool)
    if self.segment_ids is not None:
      seg = self.segment_ids[:, None, :, None] == self.segment_ids[:, None, None, :]
      mask = seg if mask is None else mask & seg
    return mask

  @staticmethod
  def ids_of(mask, q_shape, k_shape) -> tuple:
    """(query ids [B, Tq], key ids [B, Tk]): a query sees the keys with its id, exactly the
    keys `dense` lets it see (a padded key gets an id no query has)."""
    ones = lambda shape: jnp.ones(shape, jnp.int32)  # noqa: E731
    if mask is None:
      return ones(q_shape), ones(k_shape)
    pad = None if mask.padding is None else mask.padding.astype(bool)
    if mask.segment_ids is None:
      return ones(q_shape), pad.astype(jnp.int32)
    seg = mask.segment_ids.astype(jnp.int32)
    return seg, seg if pad is None else jnp.where(pad, seg, jnp.iinfo(jnp.int32).min)


def make_mask(attention_mask=None, segment_ids=None) -> Optional[Mask]:
  """The `Mask` of padding (1 = real token) and packed segments; None when nothing is masked,
  so attention skips the `where`."""
  if attention_mask is None and segment_ids is None:
    return None
  return Mask(attention_mask, segment_ids)
