"""Attention over a sequence sharded on the mesh's `context` axis (context parallelism).

Activations are sharded along the sequence (`lm.sharding.RULES` maps 'act_length' to
'context'), so everything but attention is local to a device's tokens. Attention needs every
key: `attention` runs the local queries against the keys held by all devices of the axis,
inside a `shard_map` that is manual over 'context' only (batch, heads and the other mesh axes
stay with XLA's propagation). Two schedules, picked by `ModelConfig.context_parallel`:

- 'ring': n steps; at step s a device scores its queries against the key/value block that
  started s devices behind it, folds it into a float32 online softmax (running max, sum and
  output, as flash attention does), then passes the block on with `ppermute`. Under a causal
  mask the blocks from devices ahead are skipped (`lax.cond`). No device ever holds more than
  one remote block, and XLA overlaps the next block's transfer with this block's math.
- 'allgather': `all_gather` the keys and values once, then ordinary attention for the local
  queries: simpler, one collective, the whole K/V on every device.

Both take the mask as ids (`lm.models.layers.Mask.ids_of`: a query sees a key with the same id)
plus causality and a sliding window from global positions, so no device builds a [T, T] mask;
an additive bias (T5's relative positions) is sharded along its query axis. With contiguous
blocks a causal ring is load-imbalanced (the last device scores n blocks, the first one):
zig-zag reordering of the sequence would even it out and is not done here.

The KV cache (decoding) does not use this: decoding runs on the unsharded path.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

AXIS = 'context'
SCHEDULES = ('ring', 'allgather')


def axis_size() -> int:
  """The size of the `context` axis of the mesh in scope (1 without one)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or AXIS not in mesh.axis_names:
    return 1
  return mesh.shape[AXIS]


def enabled() -> bool:
  """Whether attention runs these schedules: a context axis of size > 1 is in scope (a
  benchmark may replace this to run a schedule on one device, as its own baseline)."""
  return axis_size() > 1


def attention(
  q,
  k,
  v,
  q_ids,
  kv_ids,
  *,
  causal: bool,
  window: int = 0,
  bias: Optional[jax.Array] = None,
  scale: Optional[float] = None,
  schedule: str = 'ring',
  dtype=None,
):
  """softmax(scale q k^T + bias, masked) v with q [B, Tq, H, Dh], k, v [B, Tk, KV, Dh]
  sharded along T over the `context` axis; q_ids [B, Tq], kv_ids [B, Tk] int (a query sees
  keys with its id); causal / window from global positions (query i sees key j <= i, and
  i - j < window when window > 0); bias [1 or B, H, Tq, Tk]. Probabilities are cast to `dtype`
  (the model's compute dtype) before they weight v, as the einsum path does."""
  n = axis_size()
  tq, tk = q.shape[1], k.shape[1]
  if tq % n or tk % n:
    raise ValueError(
      f'sequence lengths {tq} (queries) and {tk} (keys) must divide over the context axis of '
      f'{n}: set data.seq_len (and the target length) to a multiple of {n}.'
    )
  if schedule not in SCHEDULES:
    raise ValueError(f'context_parallel={schedule!r}: use one of {SCHEDULES}.')
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  body = _ring if schedule == 'ring' else _allgather
  fn = functools.partial(
    body, n=n, causal=causal, window=window, scale=scale, dtype=dtype or q.dtype
  )
  seq = P(None, AXIS)
  args, specs = [q, k, v, q_ids, kv_ids], [seq] * 5
  if bias is not None:
    args.append(bias)
    specs.append(P(None, None, AXIS, None))
  return jax.shard_map(
    fn, in_specs=tuple(specs), out_specs=seq, axis_names={AXIS}, check_vma=False
  )(*args)


def _mask(q_ids, kv_ids, q_pos, k_pos, causal, window):
  """[B, 1, 1, Tq, Tk] visibility of this block's keys to the local queries."""
  visible = q_ids[:, :, None] == kv_ids[:, None, :]
  if causal:
    visible &= q_pos[:, None] >= k_pos[None, :]
  if window:
    visible &= q_pos[:, None] - k_pos[None, :] < window
  return visible[:, None, None]


def _scores(qg, k, bias, scale):
  """Float32 scores [B, KV, G, Tq, Tk] of grouped queries [B, Tq, KV, G, Dh]."""
  s = jnp.einsum('bqkgd,bskd->bkgqs', qg, k).astype(jnp.float32) * scale
  if bias is not None:
    s = s + bias.reshape(bias.shape[:1] + s.shape[1:3] + bias.shape[2:])
  return s


def _ring(q, k, v, q_ids, kv_ids, *bias, n, causal, window, scale, dtype):
  b, tq, h, dh = q.shape
  tk, kv = k.shape[1], k.shape[2]
  me = lax.axis_index(AXIS)
  qg = q.reshape(b, tq, kv, h // kv, dh)
  q_pos = me * tq + jnp.arange(tq)
  bias = bias[0] if bias else None

  def fold(carry, block, src):
    """The online-softmax update of (running max, sum, output) with one key/value block."""
    m, l, o = carry
    kb, vb, ids = block
    bb = None if bias is None else lax.dynamic_slice_in_dim(bias, src * tk, tk, axis=3)
    s = _scores(qg, kb, bb, scale)
    visible = _mask(q_ids, ids, q_pos, src * tk + jnp.arange(tk), causal, window)
    s = jnp.where(visible, s, -jnp.inf)
    # the max only keeps exp in range: its gradient cancels, so it is held constant
    m_new = lax.stop_gradient(jnp.maximum(m, s.max(-1)))
    m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # rows that have seen no key yet
    p = jnp.exp(s - m_safe[..., None])
    corr = jnp.exp(m - m_safe)
    pv = jnp.einsum('bkgqs,bskd->bqkgd', p.astype(dtype), vb, preferred_element_type=jnp.float32)
    o = o * jnp.moveaxis(corr, -1, 1)[..., None] + pv
    return m_new, l * corr + p.sum(-1), o

  stat = jnp.full((b, kv, h // kv, tq), -jnp.inf, jnp.float32)
  carry = (stat, jnp.zeros_like(stat), jnp.zeros((b, tq, kv, h // kv, dh), jnp.float32))
  block = (k, v, kv_ids)
  for step in range(n):  # unrolled: n is the (static) axis size
    src = (me - step) % n
    if causal and step:  # a block from a device ahead holds only future keys
      carry = lax.cond(src <= me, fold, lambda c, blk, s: c, carry, block, src)
    else:
      carry = fold(carry, block, src)
    if step < n - 1:
      block = lax.ppermute(block, AXIS, [(i, (i + 1) % n) for i in range(n)])
  _, l, o = carry
  l = jnp.moveaxis(jnp.where(l > 0, l, 1.0), -1, 1)[..., None]  # a row that saw no key: 0
  return (o / l).astype(dtype).reshape(q.shape)


def _allgather(q, k, v, q_ids, kv_ids, *bias, n, causal, window, scale, dtype):
  b, tq, h, dh = q.shape
  kv = k.shape[2]
  me = lax.axis_index(AXIS)
  gather = lambda x: lax.all_gather(x, AXIS, axis=1, tiled=True)  # noqa: E731
  k, v, kv_ids = gather(k), gather(v), gather(kv_ids)
  s = _scores(q.reshape(b, tq, kv, h // kv, dh), k, bias[0] if bias else None, scale)
  visible = _mask(q_ids, kv_ids, me * tq + jnp.arange(tq), jnp.arange(k.shape[1]), causal, window)
  probs = jax.nn.softmax(jnp.where(visible, s, jnp.finfo(jnp.float32).min), axis=-1)
  return jnp.einsum('bkgqs,bskd->bqkgd', probs.astype(dtype), v).astype(dtype).reshape(q.shape)
