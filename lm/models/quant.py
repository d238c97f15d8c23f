"""Frozen-weight quantization for QLoRA: int8 (one absmax scale per output column) and 4-bit
NormalFloat (NF4: Dettmers et al. 2023, the bitsandbytes code book; one absmax per block of up
to 64 inputs in each column, two codes packed per byte).

A quantized [in, out] kernel is a pair of arrays that keep the kernel's two logical axes, so it
shards on the mesh as the float kernel would: `codes` (int8 [in, out], or uint8 [in/2, out]
for NF4) and `scale` (float32 [1, out], or [in/block, out] for NF4). Every shape is static, so
`dequantize` needs no stored metadata. Error bounds, per element: int8 at most scale/2 =
absmax/254 of its column; NF4 at most `NF4_MAX_ERROR` (0.152) times its block's absmax, the
half-gap of the widest step in the code book.
"""

import math

import jax.numpy as jnp
import numpy as np

FORMATS = ('none', 'int8', 'nf4')

# bitsandbytes' NF4 code book: quantiles of N(0, 1) scaled to [-1, 1], with an exact zero.
NF4 = np.array(
  [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
  ],
  np.float32,
)  # fmt: skip
NF4_MAX_ERROR = float(np.max(np.diff(NF4)) / 2)
NF4_BLOCK = 64


def check_format(fmt: str, shape=None):
  """Raises a one-line error for an unknown format, or a kernel shape it cannot hold."""
  if fmt not in FORMATS:
    raise ValueError(f'lora.quant={fmt!r}: use one of {FORMATS}.')
  if fmt == 'nf4' and shape is not None and shape[-2] % 2:
    raise ValueError(
      f'an NF4 kernel packs two inputs per byte, but this one has {shape[-2]} inputs; '
      "use lora.quant='int8' for this model."
    )


def nf4_block(rows: int) -> int:
  """Inputs per NF4 absmax block: 64, or the largest power of two dividing `rows` below it."""
  return math.gcd(rows, NF4_BLOCK)


def shapes(fmt: str, shape) -> tuple:
  """(codes shape, codes dtype, scale shape) of a quantized [..., in, out] kernel."""
  *lead, rows, cols = shape
  lead = tuple(lead)
  if fmt == 'int8':
    return lead + (rows, cols), jnp.int8, lead + (1, cols)
  return lead + (rows // 2, cols), jnp.uint8, lead + (rows // nf4_block(rows), cols)


def quantize(w, fmt: str):
  """A float [..., in, out] kernel (leading axes: scanned layers) -> (codes, scale)."""
  check_format(fmt, w.shape)
  w = jnp.asarray(w, jnp.float32)
  if fmt == 'int8':
    scale = jnp.max(jnp.abs(w), axis=-2, keepdims=True) / 127.0
    safe = jnp.where(scale > 0, scale, 1.0)
    return jnp.clip(jnp.round(w / safe), -127, 127).astype(jnp.int8), scale
  *lead, rows, cols = w.shape
  block = nf4_block(rows)
  blocks = w.reshape(*lead, rows // block, block, cols)
  absmax = jnp.max(jnp.abs(blocks), axis=-2)
  safe = jnp.where(absmax > 0, absmax, 1.0)
  normed = (blocks / safe[..., None, :]).reshape(w.shape)
  # the nearest code: how many midpoints between codes lie below (ties to the lower code)
  idx = jnp.searchsorted(jnp.asarray((NF4[1:] + NF4[:-1]) / 2), normed).astype(jnp.uint8)
  return idx[..., 0::2, :] | (idx[..., 1::2, :] << 4), absmax


def dequantize(codes, scale, fmt: str, dtype=jnp.float32):
  """(codes, scale) -> the [..., in, out] kernel in `dtype`."""
  if fmt == 'int8':
    return (codes.astype(jnp.float32) * scale).astype(dtype)
  *lead, half, cols = codes.shape
  idx = jnp.stack([codes & 0xF, codes >> 4], axis=-2).reshape(*lead, 2 * half, cols)
  values = jnp.asarray(NF4)[idx.astype(jnp.int32)]
  block = (2 * half) // scale.shape[-2]
  return (values * jnp.repeat(scale, block, axis=-2)).astype(dtype)
