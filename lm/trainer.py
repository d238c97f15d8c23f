"""Train state and the one jitted, sharded train step every job builds from its `loss_fn`."""

import ctypes
import functools
from typing import Any, Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lm import checkpoint
from lm import optim
from lm import sharding
from lm.models import lora

flatten_dict = flax.traverse_util.flatten_dict


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def f32(tree):
  """Floating leaves as float32 (no-op on float32 trees): the optimizer's dtype."""
  up = lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x
  return jax.tree.map(up, tree)


def float_norm(tree):
  """Global norm of the floating leaves (a QLoRA base's integer codes are not weights)."""
  return optax.global_norm(
    [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  )


def state_initializer(model, tx, init_inputs):
  """rng -> TrainState with logically-annotated (boxed) params and optimizer state (for the
  trainable params only: `lm.models.lora.split`)."""

  def init(rng):
    params = model.init(rng, *init_inputs)['params']
    train, _ = lora.split(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(f32(train)))

  return init


def create_state(model, tx, mesh, seed: int, init_inputs):
  """Initialises params and optimizer state directly into their shardings."""
  return sharding.init_sharded(
    state_initializer(model, tx, init_inputs), mesh, jax.random.PRNGKey(seed)
  )


def create_state_from(model, tx, mesh, seed, init_inputs, pretrained_params, subtree=None):
  """A sharded TrainState whose params (or their `subtree`) are `pretrained_params`, after
  checking every name and shape (a changed model is an error listing them, never a partial
  load). The optimizer state is fresh (step 0, zero moments) whatever the params.

  For a LoRA model the pretrained params are its base: they are quantized on the device when
  the model's config says so, and only the adapters and heads are drawn fresh. The pretrained
  arrays go into the state as they are (no copy); one jit makes the rest, so XLA drops the
  random base it never returns and no second copy of the model is ever held.
  """
  init = state_initializer(model, tx, init_inputs)
  rng = jax.random.PRNGKey(seed)
  abstract = jax.eval_shape(init, rng)
  state_sh = sharding.to_shardings(sharding.logical_specs(abstract), mesh)
  shapes = nn.unbox(abstract).params
  target = shapes[subtree] if subtree else shapes
  if 'lm_head' in pretrained_params and 'lm_head' not in target:  # a reward model scores hidden
    pretrained_params = {k: v for k, v in pretrained_params.items() if k != 'lm_head'}
  cfg = model.cfg
  base = jax.eval_shape(lambda p: lora.merge(p, cfg), target)  # the target less adapters
  checkpoint.compare_trees(
    checkpoint.paths_and_shapes(pretrained_params),
    checkpoint.paths_and_shapes(base),
    'pretrained model',
  )
  target_sh = state_sh.params[subtree] if subtree else state_sh.params
  pre = jax.device_put(pretrained_params, lora.only_like(target_sh, base))
  prefix = (subtree,) if subtree else ()
  flat_shapes = flatten_dict(shapes)
  kept = {  # pretrained leaves that go in unchanged (not quantized)
    prefix + k: v
    for k, v in flatten_dict(pre).items()
    if flat_shapes[prefix + k].dtype == v.dtype and flat_shapes[prefix + k].shape == v.shape
  }
  flat_sh = flatten_dict(state_sh.params)
  made_sh = {k: v for k, v in flat_sh.items() if k not in kept}

  def make(rng, pre):
    """The leaves not kept (adapters, heads, quantized kernels) and the optimizer state."""
    params = dict(nn.unbox(init(rng)).params)
    placed = lora.adapt(pre, params[subtree] if subtree else params, cfg)
    if subtree:
      params[subtree] = placed
    else:
      params = placed
    flat = flatten_dict(params)  # pretrained leaves in another dtype take the model's
    return {k: flat[k].astype(flat_shapes[k].dtype) for k in made_sh}, tx.init(
      f32(lora.split(params)[0])
    )

  with sharding.use(mesh):
    made, opt_state = jax.jit(make, out_shardings=(made_sh, state_sh.opt_state))(rng, pre)
  params = flax.traverse_util.unflatten_dict({**kept, **made})
  step = jax.device_put(jnp.zeros((), jnp.int32), state_sh.step)
  _return_freed_heap()
  return TrainState(step=step, params=params, opt_state=opt_state), state_sh


def _return_freed_heap():
  """Hands the C heap's free pages back to the OS (glibc's malloc_trim; elsewhere a no-op).
  Compiling `make` above traces the whole model's init and leaves ~0.3 GB of freed compiler
  memory in the heap for a 0.5B model, which glibc keeps: the process's resident size before
  training would otherwise carry it through every step."""
  try:
    ctypes.CDLL('libc.so.6').malloc_trim(0)
  except (OSError, AttributeError):
    pass


def abstract_state(model, tx, mesh, init_inputs):
  """Shapes, dtypes and shardings of the state, allocating nothing: a restore target."""
  boxed = jax.eval_shape(state_initializer(model, tx, init_inputs), jax.random.PRNGKey(0))
  shardings = sharding.to_shardings(sharding.logical_specs(boxed), mesh)
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(boxed), shardings
  )


def _micro_batches(batch, n: int, field: str = 'train.grad_accum_steps'):
  """[B, ...] -> [n, B/n, ...] taking rows i, i+n, ... for micro-batch i, so each device's
  contiguous block of rows feeds every micro-batch and nothing moves between devices."""

  def split(x):
    if x.shape[0] % n:
      raise ValueError(
        f'batch of {x.shape[0]} rows does not split into {n} parts; '
        f'make train.batch_size divisible by {field}.'
      )
    return jnp.moveaxis(x.reshape((x.shape[0] // n, n) + x.shape[1:]), 1, 0)

  return jax.tree.map(split, batch)


def make_train_step(
  loss_fn: Callable,
  tx,
  state_shardings,
  mesh,
  config,
  *,
  norms_fn: Optional[Callable] = None,
  metrics_fn: Optional[Callable] = None,
) -> Callable:
  """(state, batch) -> (state, metrics), jitted with the state's and the batch's shardings.

  `loss_fn(params, batch, rng) -> (loss, aux)`; `config` is any job's config (lm/defaults.py):
  its seed and train block (schedule, grad_accum_steps). The dropout rng is folded from the seed
  and the step only, so a resumed run repeats the uninterrupted one.

  With train.grad_accum_steps > 1 the batch is split into micro-batches whose loss, aux and
  gradients are averaged: exact for a mean over equally many rows. A loss normalised by a count
  that varies between micro-batches (masked or real tokens) passes `norms_fn`: it runs once on
  the whole batch, `loss_fn` gets its result as a fourth argument and loss, aux and gradients
  are summed instead, so a split step equals one big step.

  With train.minibatches or train.epochs_per_batch > 1 (PPO: one step's batch is a rollout
  that several updates reuse), each of epochs_per_batch passes shuffles the batch and makes one
  update per minibatch (norms_fn then runs per minibatch); state.step still counts steps, and
  `optim.make` stretches the schedule so it counts steps too.

  The logged metrics are `metrics_fn(aux)` (`metrics_fn(aux, norms)` with `norms_fn`; default
  aux itself) plus grad_norm, param_norm (of the trained params: under LoRA the adapters and
  heads) and learning_rate (with several updates per step, the means over them).
  """
  schedule = optim.schedule(config.train)
  accum = int(config.train.get('grad_accum_steps', 1))
  minibatches = int(config.train.get('minibatches', 1))
  epochs = optim.updates_per_step(config.train) // minibatches
  base_rng = jax.random.PRNGKey(config.seed + 1)

  def update(params, opt_state, batch, rng):
    """One optimizer update on `batch` (accumulated over micro-batches)."""
    norms = () if norms_fn is None else (norms_fn(batch),)
    # only the trainable leaves are differentiated and updated: with LoRA the base is a constant
    params, frozen = lora.split(params)
    grad_fn = jax.value_and_grad(
      lambda p, b, r: loss_fn(lora.combine(p, frozen), b, r, *norms), has_aux=True
    )
    if accum == 1:
      (_, aux), grads = grad_fn(params, batch, rng)
    else:
      mbs = _micro_batches(batch, accum)

      def body(carry, xs):
        mb, i = xs
        (_, a), g = grad_fn(params, mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (g, a)), None

      (_, aux_shape), grads_shape = jax.eval_shape(
        grad_fn, params, jax.tree.map(lambda x: x[0], mbs), rng
      )
      zero = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), (grads_shape, aux_shape))
      (grads, aux), _ = jax.lax.scan(body, zero, (mbs, jnp.arange(accum)))
      if norms_fn is None:
        grads, aux = jax.tree.map(lambda x: x / accum, (grads, aux))
    # float32 optimizer math (moments, decay, the update) whatever the params' dtype; the sum
    # p + u is rounded back to it once
    grads = f32(grads)
    updates, opt_state = tx.update(grads, opt_state, f32(params))
    m = dict(aux if metrics_fn is None else metrics_fn(aux, *norms))
    m['grad_norm'] = optax.global_norm(grads)
    return lora.combine(optax.apply_updates(params, updates), frozen), opt_state, m

  def step_fn(state, batch):
    rng = jax.random.fold_in(base_rng, state.step)
    if minibatches * epochs == 1:
      params, opt_state, m = update(state.params, state.opt_state, batch, rng)
    else:  # epochs of shuffled minibatches, one update each; metrics averaged over updates

      def one(carry, xs):
        mb, r = xs
        params, opt_state, m = update(*carry, mb, r)
        return (params, opt_state), m

      def epoch(carry, e):
        r = jax.random.fold_in(rng, e)
        rows = jax.tree.leaves(batch)[0].shape[0]
        perm = jax.random.permutation(r, rows)
        mbs = _micro_batches(
          jax.tree.map(lambda x: x[perm], batch), minibatches, 'train.minibatches'
        )
        return jax.lax.scan(one, carry, (mbs, jax.random.split(r, minibatches)))

      (params, opt_state), ms = jax.lax.scan(
        epoch, (state.params, state.opt_state), jnp.arange(epochs)
      )
      m = jax.tree.map(jnp.mean, ms)
    m.update(param_norm=float_norm(lora.split(params)[0]), learning_rate=schedule(state.step))
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), m

  jitted = jax.jit(
    step_fn,
    in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
    out_shardings=(state_shardings, None),
    donate_argnums=(0,),
  )
  return sharding.with_mesh(_trimmed_after_compile(jitted), mesh)


def _trimmed_after_compile(jitted):
  """`jitted`, compiled ahead of its first call and the heap trimmed before that call runs: the
  compiler's freed memory would otherwise sit under the step's own peak (0.3 GB for a 0.5B
  model; `_return_freed_heap`). The first call reuses the executable (jit's cache)."""
  pending = [True]

  @functools.wraps(jitted)
  def call(*args):
    if pending[0]:
      pending[0] = False
      jitted.lower(*args).compile()
      _return_freed_heap()
    return jitted(*args)

  call.lower = jitted.lower  # bench/memory.py lowers the step itself
  return call


def jit_eval(fn: Callable, params_shardings, mesh, out_shardings=None) -> Callable:
  """fn(params, batch) jitted over the params' and the batch's shardings."""
  kwargs = {} if out_shardings is None else {'out_shardings': out_shardings}
  jitted = jax.jit(fn, in_shardings=(params_shardings, sharding.batch_sharding(mesh)), **kwargs)
  return sharding.with_mesh(jitted, mesh)


def evaluate(eval_step, params, batches, finish: Callable, stop=None) -> dict:
  """finish(sums, norms) over every batch, where eval_step(params, batch) -> (sums, norms)
  and both are summed over batches: each batch weighs by its own normalisers. {} when no
  batch ran (none given, or `stop` requested)."""
  sums, norms = None, None
  for batch in batches:
    if stop is not None and stop.requested:
      break
    s, n = eval_step(params, batch)
    sums = s if sums is None else jax.tree.map(jnp.add, sums, s)
    norms = n if norms is None else jax.tree.map(jnp.add, norms, n)
  if sums is None:
    return {}
  return {k: float(v) for k, v in finish(sums, norms).items()}


def param_count(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
