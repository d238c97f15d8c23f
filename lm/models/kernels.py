"""Fused attention kernels by name, from the Pallas kernels that ship with JAX (no kernel of our
own to keep): 'splash' is the TPU splash attention kernel (`jax.experimental.pallas.ops.tpu.
splash_attention`), 'flash' the GPU (Triton) flash attention (`jax.experimental.pallas.ops.gpu.
attention.mha`). Both take causal masks and segment ids (packed documents, padding as its own
segment) and have their own backward kernels.

On CPU they run in Pallas's interpret mode (the kernel body run as plain JAX ops, forward and
backward), which is how the tests check their numerics against the einsum path in
lm.models.layers; interpret mode is slow and only for tests. Compiled, each runs on its own
backend only: 'splash' on TPU, 'flash' on GPU.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.gpu import attention as gpu_attention
from jax.experimental.pallas.ops.tpu import splash_attention as splash

Array = jax.Array

IMPLS = ('splash', 'flash')  # names accepted by ModelConfig.attention_impl


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _padded_len(impl: str, t: int) -> int:
  """'splash': a multiple of 128 (its kv blocks are multiples of the TPU's 128 lanes); 'flash': a
  multiple of its block, the power of two >= t between 16 and 128."""
  if impl == 'splash':
    return _round_up(t, 128)
  return _round_up(t, min(128, max(16, 1 << (t - 1).bit_length())))


@functools.lru_cache(maxsize=64)
def _splash_kernel(t: int, h: int, kv: int, causal: bool, block: int, interpret: bool):
  """The splash kernel for one row ([H, T, Dh] queries); the mask is processed once, in NumPy."""
  mask_cls = splash.CausalMask if causal else splash.FullMask
  mask = splash.MultiHeadMask([mask_cls((t, t)) for _ in range(h)])
  sizes = splash.BlockSizes(
    block_q=block,
    block_kv=block,
    block_kv_compute=block,
    block_q_dkv=block,
    block_kv_dkv=block,
    block_kv_dkv_compute=block,
    block_q_dq=block,
    block_kv_dq=block,
  )
  make = splash.make_splash_mqa if kv == 1 else splash.make_splash_mha
  with jax.ensure_compile_time_eval():  # concrete mask arrays even under jit: safe to cache
    return make(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _splash(q, k, v, seg, kv_seg, causal, scale, interpret):
  """q [B, T, H, Dh] with T a multiple of 128 (the kernel's lane width bounds its kv blocks)."""
  t, h, kv = q.shape[1], q.shape[2], k.shape[2]
  block = next(b for b in (512, 256, 128) if t % b == 0)
  kernel = _splash_kernel(t, h, kv, causal, block, interpret)
  # The kernel has no scale: it goes on q (in float32, then back to the inputs' dtype).
  q = (q.astype(jnp.float32) * scale).astype(k.dtype)
  q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))  # [B, heads, T, Dh]
  if kv == 1:
    k, v = k[:, 0], v[:, 0]
  ids = None if seg is None else splash.SegmentIds(seg, kv_seg)
  out = jax.vmap(kernel)(q, k, v, ids)  # one row at a time, as the kernel's docs do
  return out.transpose(0, 2, 1, 3)


def _flash(q, k, v, seg, causal, scale, interpret):
  """q [B, T, H, Dh] with T a multiple of the block; k, v repeated to H heads (the kernel has no
  grouped-query form; the repeat's transpose sums the heads' gradients)."""
  t, h, kv = q.shape[1], q.shape[2], k.shape[2]
  if kv != h:
    k, v = jnp.repeat(k, h // kv, axis=2), jnp.repeat(v, h // kv, axis=2)
  block = min(128, t)
  bwd = min(32, block)
  sizes = gpu_attention.BlockSizes(
    block_q=block,
    block_k=block,
    block_q_dkv=bwd,
    block_kv_dkv=bwd,
    block_q_dq=bwd,
    block_kv_dq=bwd,
  )
  return gpu_attention.mha(
    q, k, v, seg, sm_scale=scale, causal=causal, block_sizes=sizes, interpret=interpret
  )


def fused_attention(
  impl: str,
  q: Array,
  k: Array,
  v: Array,
  *,
  causal: bool,
  segment_ids: Optional[Array] = None,
  kv_segment_ids: Optional[Array] = None,
  scale: Optional[float] = None,
  interpret: Optional[bool] = None,
) -> Array:
  """softmax(scale * q k^T, masked) v by the kernel `impl` (one of IMPLS), self-attention only.

  q [B, Tq, H, Dh], k, v [B, Tk, KV, Dh] with Tq == Tk and KV dividing H (grouped-query: query
  head i uses kv head i // (H // KV)). segment_ids [B, Tq], kv_segment_ids [B, Tk] (int32 or
  None; one given alone stands for both): a query sees only keys of its own segment; the caller
  passes padding as segment 0, and every query must see at least one key (a row with none is
  undefined). 'flash' takes one set of ids for queries and keys: a kv_segment_ids that is not the
  same array as segment_ids is an error. causal: query i sees keys <= i. scale: a Python float,
  None is 1 / sqrt(Dh). interpret: Pallas's interpret mode, None is True on CPU.

  Sequences are padded internally to the kernels' blocks (128 for 'splash', a power of two up to
  128 for 'flash') with a segment id no real token has, and the output sliced back. Returns
  [B, Tq, H, Dh] in q.dtype.
  """
  if impl not in IMPLS:
    raise ValueError(f'attention impl {impl!r} is not one of {IMPLS}')
  b, t, h, dh = q.shape
  kv = k.shape[2]
  if k.shape[1] != t or v.shape[:3] != k.shape[:3]:
    raise ValueError(f'fused attention needs Tq == Tk (self-attention): q {q.shape}, k {k.shape}')
  if h % kv:
    raise ValueError(f'kv heads ({kv}) must divide query heads ({h})')
  if impl == 'flash' and kv_segment_ids is not None and segment_ids is not None:
    if kv_segment_ids is not segment_ids:
      raise ValueError("'flash' takes one set of segment ids (kv_segment_ids must be segment_ids)")
  seg = segment_ids if segment_ids is not None else kv_segment_ids
  kv_seg = kv_segment_ids if kv_segment_ids is not None else segment_ids
  scale = 1.0 / float(np.sqrt(dh)) if scale is None else float(scale)
  if interpret is None:
    interpret = jax.default_backend() == 'cpu'
  dtype = q.dtype
  k, v = k.astype(dtype), v.astype(dtype)

  tp = _padded_len(impl, t)
  if tp != t:  # pad: the padding is a segment of its own, never seen by (nor seeing) real tokens
    if seg is None:
      seg = kv_seg = jnp.zeros((b, t), jnp.int32)
    pad = jnp.full((b, tp - t), jnp.maximum(seg.max(), kv_seg.max()) + 1, jnp.int32)
    pad_ids = lambda s: jnp.concatenate([s.astype(jnp.int32), pad], axis=1)
    same = seg is kv_seg
    seg = pad_ids(seg)
    kv_seg = seg if same else pad_ids(kv_seg)
    q, k, v = (jnp.pad(x, ((0, 0), (0, tp - t), (0, 0), (0, 0))) for x in (q, k, v))
  elif seg is not None:
    same = seg is kv_seg
    seg = seg.astype(jnp.int32)
    kv_seg = seg if same else kv_seg.astype(jnp.int32)

  if impl == 'splash':
    out = _splash(q, k, v, seg, kv_seg, causal, scale, interpret)
  else:
    out = _flash(q, k, v, seg, causal, scale, interpret)
  return out[:, :t].astype(dtype)
