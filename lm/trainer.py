"""Train state, the jitted sharded train/eval steps, and the loop's small helpers."""
import signal
import threading
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lm import objectives
from lm import optim
from lm import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def state_initializer(model, tx, init_inputs):
  """rng -> TrainState with logically-annotated (boxed) params and optimizer state."""
  def init(rng):
    params = model.init(rng, *init_inputs)['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  return init


def create_state(model, tx, mesh, seed: int, init_inputs):
  """Initialises params and optimizer state directly into their shardings."""
  return sharding.init_sharded(state_initializer(model, tx, init_inputs), mesh,
                               jax.random.PRNGKey(seed))


def abstract_state(model, tx, mesh, init_inputs):
  """Shapes, dtypes and shardings of the state, allocating nothing: a restore target."""
  boxed = jax.eval_shape(state_initializer(model, tx, init_inputs), jax.random.PRNGKey(0))
  shardings = sharding.to_shardings(sharding.logical_specs(boxed), mesh)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      nn.unbox(boxed), shardings)


def _micro_batches(batch, n: int):
  """[B, ...] -> [n, B/n, ...] taking rows i, i+n, ... for micro-batch i, so each device's
  contiguous block of rows feeds every micro-batch and nothing moves between devices."""
  def split(x):
    if x.shape[0] % n:
      raise ValueError(f'batch of {x.shape[0]} rows does not split into {n} micro-batches; '
                       'make train.batch_size divisible by train.grad_accum_steps.')
    return jnp.moveaxis(x.reshape((x.shape[0] // n, n) + x.shape[1:]), 1, 0)
  return jax.tree.map(split, batch)


def make_train_step(config, model, tx, state_shardings, mesh) -> Callable:
  objective, accum = config.objective, int(config.train.grad_accum_steps)
  base_rng = jax.random.PRNGKey(config.seed + 1)
  lr = optim.schedule(config.train)

  def step_fn(state, batch):
    norms = objectives.normalizers(objective, batch)
    rng = jax.random.fold_in(base_rng, state.step)  # dropout depends on the step only: exact resume

    def loss_fn(params, mb, r):
      sums = objectives.loss_sums(objective, model, params, mb, r, False, config.train.loss_chunk)
      return objectives.total_loss(sums, norms), sums

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum == 1:
      (_, sums), grads = grad_fn(state.params, batch, rng)
    else:
      mbs = _micro_batches(batch, accum)

      def body(carry, xs):
        mb, i = xs
        (_, s), g = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
        return objectives.add_sums(carry, (g, s)), None

      (_, sums_shape), grads_shape = jax.eval_shape(
          grad_fn, state.params, jax.tree.map(lambda x: x[0], mbs), rng)
      zero = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), (grads_shape, sums_shape))
      (grads, sums), _ = jax.lax.scan(body, zero, (mbs, jnp.arange(accum)))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    m = objectives.metrics(sums, norms)
    m.update(grad_norm=optax.global_norm(grads), param_norm=optax.global_norm(params),
             learning_rate=lr(state.step))
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), m

  batch_sh = sharding.batch_sharding(mesh)
  jitted = jax.jit(step_fn, in_shardings=(state_shardings, batch_sh),
                   out_shardings=(state_shardings, None), donate_argnums=(0,))
  return sharding.with_mesh(jitted, mesh)


def make_eval_step(config, model, params_shardings, mesh) -> Callable:
  """Returns summed (nll, correct) terms and normalisers: averaged over many batches by the caller."""
  def eval_fn(params, batch):
    sums = objectives.loss_sums(config.objective, model, params, batch, None, True,
                                config.train.loss_chunk)
    return sums, objectives.normalizers(config.objective, batch)
  jitted = jax.jit(eval_fn, in_shardings=(params_shardings, sharding.batch_sharding(mesh)))
  return sharding.with_mesh(jitted, mesh)


def evaluate(eval_step, params, batches, stop=None) -> dict:
  """Mean metrics over batches, weighting each by its own normalisers."""
  sums, norms = None, None
  for batch in batches:
    if stop is not None and stop.requested:
      break
    s, n = eval_step(params, batch)
    sums = s if sums is None else objectives.add_sums(sums, s)
    norms = n if norms is None else objectives.add_sums(norms, n)
  if sums is None:
    return {}
  return {k: float(v) for k, v in objectives.metrics(sums, norms).items()}


class StopFlag:
  """Set by SIGTERM/SIGINT; every long loop checks it at step boundaries and stops cleanly."""

  def __init__(self):
    self.requested = False
    self.signal = None

  def install(self):
    if threading.current_thread() is not threading.main_thread():
      return self
    for sig in (signal.SIGTERM, signal.SIGINT):
      signal.signal(sig, self._handler)
    return self

  def _handler(self, signum, frame):
    del frame
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested, self.signal = True, signal.Signals(signum).name


def check_finite(metrics: dict, step: int, last_checkpoint):
  """Stops on a NaN/Inf loss or parameters, before anything non-finite is checkpointed."""
  bad = {k: float(metrics[k]) for k in ('loss', 'param_norm') if k in metrics
         and not np.isfinite(float(metrics[k]))}
  if bad:
    where = (f'last good checkpoint: step {last_checkpoint}' if last_checkpoint is not None
             else 'no checkpoint was saved')
    what = ', '.join(f'{k} is {v}' for k, v in bad.items())
    raise FloatingPointError(f'{what} at step {step}; {where}. Lower train.lr, raise '
                             'train.warmup_steps or set train.clip_norm, then resume.')


def param_count(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))

