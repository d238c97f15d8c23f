"""BERT-style encoder and GPT-style decoder as pure functional Flax Linen modules.

One `Block` serves both: `pre_ln` picks GPT-2 (pre-LN, final LayerNorm) or BERT
(post-LN, LayerNorm after the embeddings) placement, `causal` picks the mask. The same
`Decoder` is Llama / Mistral / Qwen2 with `norm='rmsnorm'`, `mlp='swiglu'`, `position='rope'`,
`num_kv_heads` < `num_heads` (grouped-query attention), `tie_embeddings=False`, `bias='none'`
(or `'qkv'`, Qwen2) and, for Mistral, a `sliding_window`.
Every parameter carries logical axis names and every large activation a logical
constraint; `lm.sharding.RULES` maps those names onto the device mesh.
"""

import dataclasses
import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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
  # RoPE frequency scaling for longer contexts: 'none' | 'linear' (positions / rope_factor) |
  # 'llama3' (low frequencies / rope_factor, high ones kept, a smooth ramp between, by
  # wavelength against rope_original_max_len / the low and high freq factors)
  rope_scaling: str = 'none'
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_len: int = 8192
  num_kv_heads: int = 0  # grouped-query attention (1: multi-query); 0 = num_heads
  sliding_window: int = 0  # each query sees only the last `sliding_window` keys (Mistral); 0 = all
  pre_ln: bool = False  # False: BERT post-LN; True: GPT-2 pre-LN
  norm: str = 'layernorm'  # 'layernorm' | 'rmsnorm' (Llama: no mean, no bias)
  mlp: str = 'dense'  # 'dense' (act(x W_i) W_o) | 'swiglu' (Llama: (silu(x W_gate) * x W_i) W_o)
  bias: str = 'all'  # 'all' | 'none' (Llama, Mistral) | 'qkv' (Qwen2: query/key/value only)
  tie_embeddings: bool = True  # Decoder: logits from the token embedding; False: an lm_head
  activation: str = 'gelu'  # 'gelu' (erf, BERT) | 'gelu_tanh' (GPT-2 "gelu_new") | 'silu'
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

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads


def _init(cfg: ModelConfig, *names):
  return nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range), names)


def _zeros(*names):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def _ones(*names):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), names)


def _constrain(x, *names):
  return nn.with_logical_constraint(x, names)


_ACT_HEADS = ('batch', 'act_length', 'act_heads', 'act_kv')
_ACT_KV_HEADS = ('batch', 'act_length', 'act_kv_heads', 'act_kv')


def _activation(name):
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
      scale_init=_ones('embed'),
      name=name,
    )
  return nn.LayerNorm(
    epsilon=c.layer_norm_eps,
    dtype=c.dtype,
    param_dtype=c.param_dtype,
    use_bias=c.bias != 'none',
    scale_init=_ones('embed'),
    bias_init=_zeros('embed'),
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
  mask: Optional[Array],
  cfg: ModelConfig,
  *,
  causal: bool = False,
  bias: Optional[Array] = None,
  scale: Optional[float] = None,
  dropout: Optional[nn.Module] = None,
) -> Array:
  """The attention kernel every attention layer calls (lm.model's and lm.t5's): softmax(scale *
  q k^T + bias, masked) v over q [B, Tq, H, Dh] and k, v [B, Tk, KV, Dh], KV dividing H
  (grouped-query attention: query head i reads kv head i // (H / KV)).

  `cfg.attention_impl` picks it: 'einsum' (float32 scores and softmax, written out here), or
  `jax.nn.dot_product_attention` ('xla', 'cudnn'; 'auto': cudnn on a GPU in bf16/fp16, else
  xla). mask: bool, broadcastable to [B, H, Tq, Tk]; causal: query i sees keys <= i (fused
  kernels skip the masked half); bias: added to the scores ([1, H, Tq, Tk]: T5's relative
  positions); scale: None is 1 / sqrt(Dh). dropout: applied to the probabilities (an
  nn.Dropout, called in the caller's module); given, the einsum path runs whatever the impl,
  since the fused kernels have no dropout.
  """
  h, kv, dh = q.shape[2], k.shape[2], q.shape[3]
  impl = cfg.attention_impl
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
    dense = lambda heads, axis, name: nn.Dense(
      heads * dh,
      use_bias=c.bias != 'none',
      dtype=c.dtype,
      param_dtype=c.param_dtype,
      kernel_init=_init(c, 'embed', axis),
      bias_init=_zeros(axis),
      name=name,
    )(x)
    q = _constrain(dense(h, 'heads', 'query').reshape(x.shape[:2] + (h, dh)), *_ACT_HEADS)
    k, v = (
      _constrain(dense(kv, 'kv_heads', n).reshape(x.shape[:2] + (kv, dh)), *_ACT_KV_HEADS)
      for n in ('key', 'value')
    )
    if c.position == 'rope':
      freq = rope_frequencies(c)
      q, k = rope(q, positions, freq), rope(k, positions, freq)
    causal = self.causal
    q_idx = jnp.arange(q.shape[1])  # query and key slots, for the sliding window
    k_idx = q_idx
    if decode:  # the cache applies causality per slot
      k, v, mask, q_idx = self._update_cache(k, v, mask)
      k_idx = jnp.arange(k.shape[1])
      causal = False
    if c.sliding_window:  # key j is visible to query i when i - j < sliding_window
      window = (q_idx[:, None] - k_idx[None, :] < c.sliding_window)[None, None]
      mask = window if mask is None else mask & window

    dropout = None
    if not deterministic and c.attention_dropout_rate > 0.0:
      dropout = nn.Dropout(c.attention_dropout_rate)
    out = dot_product_attention(q, k, v, mask, c, causal=causal, dropout=dropout)
    out = _constrain(out, *_ACT_HEADS)
    return nn.Dense(
      c.hidden_size,
      use_bias=c.bias == 'all',
      dtype=c.dtype,
      param_dtype=c.param_dtype,
      kernel_init=_init(c, 'heads', 'embed'),
      bias_init=_zeros('embed'),
      name='out',
    )(out.reshape(out.shape[:2] + (-1,)))

  def _update_cache(self, k, v, mask):
    """Writes k, v at the cache index and masks each query to the slots up to its own.

    `mask` (padding over all cache slots, or None) comes from the caller. The cache has a
    fixed length, so every decode step costs the same whatever its position. Also returns
    the queries' slots (for the sliding window).
    """
    shape = k.shape  # the first (init) call sizes the cache: [B, max_length, kv heads, D]
    ck = self.variable('cache', 'cached_key', jnp.zeros, shape, k.dtype)
    cv = self.variable('cache', 'cached_value', jnp.zeros, shape, v.dtype)
    idx = self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))
    q_slots = jnp.arange(k.shape[1])
    if self.is_initializing():
      return k, v, mask, q_slots
    i = idx.value
    ck.value = jax.lax.dynamic_update_slice(ck.value, k.astype(ck.value.dtype), (0, i, 0, 0))
    cv.value = jax.lax.dynamic_update_slice(cv.value, v.astype(cv.value.dtype), (0, i, 0, 0))
    idx.value = i + k.shape[1]
    slots = jnp.arange(ck.value.shape[1])
    causal = (slots[None, :] <= i + q_slots[:, None])[None, None]
    return ck.value, cv.value, causal if mask is None else mask & causal, i + q_slots


class Mlp(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, deterministic: bool):
    c = self.cfg
    dense = lambda size, axes, name: nn.Dense(
      size,
      use_bias=c.bias == 'all',
      dtype=c.dtype,
      param_dtype=c.param_dtype,
      kernel_init=_init(c, *axes),
      bias_init=_zeros(axes[1]),
      name=name,
    )
    h = dense(c.mlp_dim, ('embed', 'mlp'), 'wi')(x)
    if c.mlp == 'swiglu':
      h = jax.nn.silu(dense(c.mlp_dim, ('embed', 'mlp'), 'wi_gate')(x)) * h
    else:
      h = _activation(c.activation)(h)
    h = _constrain(h, 'batch', 'act_length', 'act_mlp')
    h = dense(c.hidden_size, ('mlp', 'embed'), 'wo')(h)
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


def output_embedding(params) -> Array:
  """A Decoder's output projection as [V, D] (the token embedding when tied)."""
  if 'lm_head' in params:
    return params['lm_head']['kernel'].T
  return params['embed']['token']['embedding']


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
        kernel_init=_init(c, 'embed', 'vocab'),
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
    return _constrain(self.ln_final(x), 'batch', 'act_length', 'act_embed')

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
