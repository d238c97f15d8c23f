"""LoRA (Hu et al. 2021) and QLoRA (Dettmers et al. 2023) on every model family.

Every projection of an attention or MLP block is a `Dense` naming its LoRA target ('q', 'k',
'v', 'o', 'mlp_in', 'mlp_out'). With `ModelConfig.lora_rank` > 0, a targeted `Dense` adds
`lora_a` [in, r] (uniform, PyTorch's Linear init, as PEFT) and `lora_b` [r, out] (zeros) and
returns x W + b + (alpha / r) dropout(x) A B: PEFT's `LoraLayer` formula, so adapters move to
and from PEFT as transposes (`lm.hf.peft`). The adapters carry the kernel's logical axes, so they
shard on the mesh like the weight they adapt. With `ModelConfig.quant` ('int8' | 'nf4') every
attention and MLP kernel is stored quantized (`lm.models.quant`) and dequantized on the fly in
the compute dtype: QLoRA.

Which parameters train is a function of the params tree alone (`trainable`): with adapters
present, the adapters and any head a job adds ('head', 'value_head') train; the base is frozen.
`lm.trainer` differentiates and keeps optimizer state for the trainable leaves only, so a LoRA
step never computes a base-sized gradient and AdamW holds adapter-sized moments.

Why not qwix: qwix adds LoRA by intercepting a module's dot_generals, with parameter names and
shapes of its own. Here the adapted projections are the eight named `Dense` calls above, so
explicit parameters give PEFT's names, the weight's sharding axes, merge and export with no
interception layer; int8 and NF4 are a few lines each (`lm.models.quant`).
"""

import dataclasses
import functools
from typing import Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.models import quant
from lm.models.config import ModelConfig

TARGETS = ('q', 'k', 'v', 'o', 'mlp_in', 'mlp_out')
# a job config's `lora` block field -> the ModelConfig field it sets
FIELDS = dict(
  rank='lora_rank',
  alpha='lora_alpha',
  dropout='lora_dropout',
  targets='lora_targets',
  quant='quant',
)
ADAPTERS = ('lora_a', 'lora_b')
HEADS = ('head', 'value_head')  # top-level params a job adds on a body: they train fully


def targets_of(cfg: ModelConfig) -> tuple:
  return tuple(t for t in cfg.lora_targets.split(',') if t)


def configure(cfg: ModelConfig, lora, param_dtype: Optional[str] = None) -> ModelConfig:
  """`cfg` with a job config's `lora` block (rank, alpha, dropout, targets, quant) applied
  (None or rank 0 and quant 'none': no adapters), and the dtype the job's params take.

  That dtype is `param_dtype` when the job sets one (its `model_overrides`); else a LoRA model
  keeps its base's (a bfloat16 checkpoint stays bfloat16: it is frozen, so nothing rounds away),
  and full training gets float32 master params, whatever the checkpoint's dtype: an Adam step
  below bfloat16's 8-bit mantissa would round away on a bfloat16 weight."""
  rank = 0 if lora is None else int(lora.get('rank', 0))
  dtype = param_dtype or (cfg.param_dtype if rank > 0 else 'float32')
  cfg = dataclasses.replace(cfg, param_dtype=dtype)
  if lora is None:
    return cfg
  fmt = lora.get('quant', 'none')
  targets = lora.get('targets', ','.join(TARGETS))
  targets = targets if isinstance(targets, str) else ','.join(targets)
  if rank < 0:
    raise ValueError(f'lora.rank={rank}: use 0 (no adapters) or a positive rank.')
  unknown = [t for t in targets.split(',') if t and t not in TARGETS]
  if unknown:
    raise ValueError(f'lora.targets has {unknown}: use names from {TARGETS}.')
  quant.check_format(fmt)
  if fmt != 'none' and rank == 0:
    raise ValueError(f'lora.quant={fmt!r} freezes a quantized base: set lora.rank > 0 too.')
  if rank == 0:
    return cfg
  return dataclasses.replace(
    cfg,
    lora_rank=rank,
    lora_alpha=float(lora.get('alpha', 16.0)),
    lora_dropout=float(lora.get('dropout', 0.0)),
    lora_targets=targets,
    quant=fmt,
  )


def for_job(cfg: ModelConfig, config) -> ModelConfig:
  """The model config a tuning job trains: its checkpoint's `cfg` with the job config's
  `model_overrides` (those set) and `lora` block applied (`configure`)."""
  given = config.get('model_overrides') or {}
  overrides = {k: v for k, v in given.items() if v is not None}
  cfg = dataclasses.replace(cfg, **overrides)
  return configure(cfg, config.get('lora'), overrides.get('param_dtype'))


def base_config(cfg: ModelConfig) -> ModelConfig:
  """`cfg` without adapters or quantization (every lora field at its default): the model a
  merged export describes."""
  default = ModelConfig()
  return dataclasses.replace(cfg, **{f: getattr(default, f) for f in FIELDS.values()})


def _dot(x, w):
  return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def _cast(dtype, w):
  return w.astype(dtype)


def _dequantized(fmt, dtype, stored):
  return quant.dequantize(*stored, fmt, dtype)


def _tied(stored, like):
  """`stored` made to depend on `like`: a zero taken from it is added to each float leaf. XLA
  can then neither widen the weight before `like` exists (its CPU scheduler would widen every
  weight at once) nor merge two widenings of one weight into a single buffer kept alive between
  them; optimization barriers do not stop that on CPU, which drops them before its CSE. (A
  non-finite first element of `like` would spread to the whole product.)"""
  zero = jax.lax.stop_gradient(like.reshape(-1)[0]) * 0
  return jax.tree.map(
    lambda s: s + zero.astype(s.dtype) if jnp.issubdtype(s.dtype, jnp.floating) else s, stored
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def widened_dot(widen: Callable, x, stored):
  """x @ widen(stored), for a kernel stored narrower than the compute dtype (bfloat16 params under
  float32 compute, or a quantized kernel): the value and gradients of the plain expression, but
  each widening happens where it is used, the backward pass's apart from the forward's. Plain
  autodiff keeps widen(stored) as the residual for x's gradient: a float32 copy of every frozen
  bf16 weight (2x the bf16 model) or dequantized QLoRA kernel, alive from the forward pass to
  the backward one (measured on the Qwen2-0.5B shape: bench/logs/qwen_shape_2026-12-07)."""
  return _dot(x, widen(_tied(stored, x)))


def _widened_fwd(widen, x, stored):
  return widened_dot(widen, x, stored), (x, stored)


def _widened_bwd(widen, res, g):
  x, stored = res
  w, widen_vjp = jax.vjp(lambda s: widen(_tied(s, g)), stored)
  dx, dw = jax.vjp(_dot, x, w)[1](g)
  return dx, widen_vjp(dw)[0]  # dw: dead code unless the kernel trains


widened_dot.defvjp(_widened_fwd, _widened_bwd)


def _vocab_blocks(v: int) -> int:
  return next(k for k in range(min(16, v), 0, -1) if v % k == 0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def widened_attend(dtype, x, table):
  """x @ table.T (the tied output layer) for a [V, D] table stored narrower than `dtype`, widened
  one block of vocabulary rows at a time (a loop over up to 16 blocks), forward and backward: the
  whole table widened at once is the largest temporary of a bf16 LoRA step (0.55 GB for
  Qwen2-0.5B's 152k x 896 table). The table rides in the loop's carry behind an optimization
  barrier, so XLA cannot widen it once outside the loop. The value and gradients of the plain
  expression, up to float32 summation order."""
  n = _vocab_blocks(table.shape[0])
  size = table.shape[0] // n

  def block(carry, i):  # each block's logits written in place: no [n, ..., V/n] stack to transpose
    t, out = jax.lax.optimization_barrier(carry)
    rows = jax.lax.dynamic_slice_in_dim(t, i * size, size)
    y = _dot(x, rows.astype(dtype).T)
    return (t, jax.lax.dynamic_update_slice_in_dim(out, y, i * size, axis=-1)), None

  out = jnp.zeros((*x.shape[:-1], table.shape[0]), dtype)
  return jax.lax.scan(block, (table, out), jnp.arange(n))[0][1]


def _attend_fwd(dtype, x, table):
  return widened_attend(dtype, x, table), (x, table)


def _attend_bwd(dtype, res, g):
  x, table = res
  n = _vocab_blocks(table.shape[0])
  size = table.shape[0] // n

  def block(carry, i):
    dx, t = jax.lax.optimization_barrier(carry)
    rows = jax.lax.dynamic_slice_in_dim(t, i * size, size).astype(dtype)
    gb = jax.lax.dynamic_slice_in_dim(g, i * size, size, axis=-1)
    drows = (gb.reshape(-1, size).T @ x.reshape(-1, x.shape[-1])).astype(t.dtype)
    return (dx + gb @ rows, t), drows  # drows: dead code unless the table trains

  (dx, _), drows = jax.lax.scan(block, (jnp.zeros_like(x), table), jnp.arange(n))
  return dx, drows.reshape(table.shape)


widened_attend.defvjp(_attend_fwd, _attend_bwd)


class Dense(nn.Module):
  """nn.Dense's [in, out] kernel and bias and the same dot_general, plus a LoRA adapter when
  `target` is among the config's targets and a quantized kernel when `cfg.quant` is set."""

  features: int
  cfg: ModelConfig
  target: str
  axes: tuple  # logical names of the kernel's (in, out) axes
  use_bias: bool = False
  kernel_init: Optional[Callable] = None  # raw initializer; default normal(initializer_range)

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    c = self.cfg
    if self.target not in TARGETS:
      raise ValueError(f'Dense target {self.target!r}: use one of {TARGETS}.')
    init = self.kernel_init or nn.initializers.normal(c.initializer_range)
    shape = (x.shape[-1], self.features)
    part = lambda fn, names: nn.with_logical_partitioning(fn, names)
    if c.quant == 'none':
      kernel = self.param('kernel', part(init, self.axes), shape, c.param_dtype)
    else:
      # one float draw quantized into both arrays when initializing; at apply flax checks the
      # stored shapes against the init functions, which then give zeros of the right shapes
      codes_shape, codes_dtype, scale_shape = quant.shapes(c.quant, shape)
      made = (jnp.zeros(codes_shape, codes_dtype), jnp.zeros(scale_shape, jnp.float32))
      if self.is_initializing():
        made = quant.quantize(init(self.make_rng('params'), shape, jnp.float32), c.quant)
      codes = self.param('kernel', part(lambda _: made[0], self.axes))
      scale = self.param('kernel_scale', part(lambda _: made[1], ('quant_block', self.axes[1])))
      kernel = (codes, scale)
    bias = None
    if self.use_bias:
      bias = self.param(
        'bias', part(nn.initializers.zeros_init(), self.axes[1:]), shape[1:], c.param_dtype
      )
    x, bias = nn.dtypes.promote_dtype(x, bias, dtype=c.dtype)
    if c.quant != 'none':
      y = widened_dot(functools.partial(_dequantized, c.quant, c.dtype), x, kernel)
    elif jnp.dtype(kernel.dtype) != jnp.dtype(c.dtype):
      y = widened_dot(functools.partial(_cast, c.dtype), x, kernel)
    else:
      y = _dot(x, kernel)
    if bias is not None:
      y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
    if c.lora_rank and self.target in targets_of(c):
      r = c.lora_rank
      fan_in = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')  # torch Linear
      a = self.param('lora_a', part(fan_in, (self.axes[0], 'lora_rank')), (shape[0], r))
      b = self.param(
        'lora_b', part(nn.initializers.zeros_init(), ('lora_rank', self.axes[1])), (r, shape[1])
      )
      h = x
      if c.lora_dropout > 0.0:
        h = nn.Dropout(c.lora_dropout)(h, deterministic=deterministic)
      h, a, b = nn.dtypes.promote_dtype(h, a, b, dtype=c.dtype)
      y = y + (h @ a @ b) * (c.lora_alpha / r)
    return y


def _flat(params) -> dict:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(params))


def has_adapters(params) -> bool:
  return any(k[-1] in ADAPTERS for k in _flat(params))


def trainable(path: tuple, adapters: bool) -> bool:
  """Whether the leaf at `path` trains: all do without adapters; with them, the adapters and the
  heads a job added."""
  return not adapters or path[-1] in ADAPTERS or path[0] in HEADS


def split(params) -> tuple:
  """(trainable, frozen) nested dicts that `combine` puts back together; frozen is {} when the
  tree has no adapters (every leaf trains, the tree is returned as it is)."""
  if not has_adapters(params):
    return params, {}
  flat = _flat(params)
  unflat = flax.traverse_util.unflatten_dict
  return (
    unflat({k: v for k, v in flat.items() if trainable(k, True)}),
    unflat({k: v for k, v in flat.items() if not trainable(k, True)}),
  )


def combine(train, frozen):
  if not frozen:
    return train
  return flax.traverse_util.unflatten_dict({**_flat(frozen), **_flat(train)})


def _kernels(flat: dict) -> dict:
  """{module path: its leaves} of the Dense modules that hold adapters or quantized kernels."""
  mods = {}
  for k, v in flat.items():
    mods.setdefault(k[:-1], {})[k[-1]] = v
  return {m: leaves for m, leaves in mods.items() if set(leaves) & {'lora_a', 'kernel_scale'}}


def only_like(tree, like):
  """`tree` restricted to the leaf paths of `like` (shardings of a target's base part)."""
  keep = set(_flat(like))
  return flax.traverse_util.unflatten_dict({k: v for k, v in _flat(tree).items() if k in keep})


def merge(params, cfg: ModelConfig):
  """The plain model's params: each adapted kernel W + (alpha / r) A B (dequantized first when
  quantized), in the base's param_dtype. With `base_config(cfg)` it is an ordinary model, for
  export or fast generation."""
  flat = _flat(params)
  dtype = jnp.dtype(cfg.param_dtype)
  for mod, leaves in _kernels(flat).items():
    w = leaves['kernel']
    if 'kernel_scale' in leaves:
      w = quant.dequantize(w, flat.pop(mod + ('kernel_scale',)), cfg.quant, jnp.float32)
    if 'lora_a' in leaves:
      a, b = flat.pop(mod + ('lora_a',)), flat.pop(mod + ('lora_b',))
      w = jnp.asarray(w, jnp.float32) + (a @ b) * (cfg.lora_alpha / cfg.lora_rank)
    flat[mod + ('kernel',)] = jnp.asarray(w, dtype)
  return flax.traverse_util.unflatten_dict(flat)


def without_adapters(params):
  """The same tree with every lora_b zeroed: the frozen base's function (a LoRA run's reference
  model) with no copy of the base weights."""
  flat = _flat(params)
  return flax.traverse_util.unflatten_dict(
    {k: jnp.zeros_like(v) if k[-1] == 'lora_b' else v for k, v in flat.items()}
  )


def adapt(base_params, init_params, cfg: ModelConfig):
  """Pretrained base params (float, as imported) made into the params of a LoRA model `cfg`:
  kernels quantized when `cfg.quant` is set, adapters taken from `init_params` (a fresh init,
  or any tree holding them)."""
  flat = _flat(base_params)
  init = _flat(init_params)
  for mod, leaves in _kernels(init).items():
    if 'kernel_scale' in leaves:
      codes, scale = quant.quantize(flat[mod + ('kernel',)], cfg.quant)
      flat[mod + ('kernel',)], flat[mod + ('kernel_scale',)] = codes, scale
    for name in ADAPTERS:
      if name in leaves:
        flat[mod + (name,)] = leaves[name]
  return flax.traverse_util.unflatten_dict(flat)
