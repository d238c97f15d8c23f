"""The one training loop every job runs, and its periodic actions.

`fit` steps a `trainer.make_train_step` over step-indexed batches (a resumed run sees the
batches an uninterrupted one would) and, at step boundaries: logs (stopping on a NaN/Inf
loss or parameters), evaluates, keeps the best params (`Best`, with early stopping),
checkpoints, and on SIGTERM/SIGINT saves and returns. Nothing non-finite is ever saved.
"""

import dataclasses
import os
import signal
import threading
import time
from typing import Any, Callable, Optional

import jax
import numpy as np

from lm import checkpoint
from lm import progress
from lm import report


def itstime(step: int, every: int, total: int) -> bool:
  """Whether a periodic action runs after `step`: every `every` steps (0 = never) and at the end."""
  return bool(every) and step % every == 0 or step == total


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

  def request(self, reason: str):
    """Stops the loop at the next step boundary, saving first, for `reason` (a job's own stop
    rule, e.g. PPO's KL budget); `Fit.stopped` is the reason."""
    self.requested, self.signal = True, reason

  def _handler(self, signum, frame):
    del frame
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested, self.signal = True, signal.Signals(signum).name


def check_finite(metrics: dict, step: int, last_checkpoint):
  """Stops on a NaN/Inf loss or parameters, before anything non-finite is checkpointed."""
  bad = {
    k: float(metrics[k])
    for k in ('loss', 'param_norm')
    if k in metrics and not np.isfinite(float(metrics[k]))
  }
  if bad:
    where = (
      f'last good checkpoint: step {last_checkpoint}'
      if last_checkpoint is not None
      else 'no checkpoint was saved'
    )
    what = ', '.join(f'{k} is {v}' for k, v in bad.items())
    raise FloatingPointError(
      f'{what} at step {step}; {where}. Lower train.lr, raise '
      'train.warmup_steps or set train.clip_norm, then resume.'
    )


def check_early_stopping(metric: str, mode: str, patience: int, reported=None):
  """Raises before any work on settings that would fail or mislead later: a mode typo, an
  empty metric, a metric missing from `reported` (the task's metrics, when it lists them),
  a maximised loss, a negative patience."""
  if mode not in ('max', 'min'):
    raise ValueError(f"early_stopping.mode={mode!r}: use 'max' or 'min'.")
  if not metric:
    raise ValueError('early_stopping.metric is empty: name the eval metric that picks best/.')
  if reported is not None and metric not in reported:
    raise ValueError(
      f'early_stopping.metric={metric!r} is not a metric this task reports: use one of '
      f'{", ".join(reported)}.'
    )
  if metric == 'loss' and mode != 'min':
    raise ValueError("early_stopping.metric='loss' needs early_stopping.mode='min'.")
  if int(patience) < 0:
    raise ValueError(f'early_stopping.patience={patience}: use 0 (never stop) or more.')


class Best:
  """The best params by one eval metric, kept in their own directory (keep 1), and early
  stopping after `patience` evaluations without improvement (0 = never)."""

  def __init__(self, directory: str, metric: str, mode: str = 'max', patience: int = 0):
    check_early_stopping(metric, mode, patience)
    self.metric, self.mode, self.patience = metric, mode, int(patience)
    self.value, self.step, self.bad_evals = None, None, 0
    self._ckpt = checkpoint.Checkpointer(directory, every=1, keep=1, async_save=False)

  def meta(self) -> dict:
    return {'best_value': self.value, 'best_step': self.step, 'bad_evals': self.bad_evals}

  def load(self, meta: dict):
    self.value, self.step = meta.get('best_value'), meta.get('best_step')
    self.bad_evals = meta.get('bad_evals', 0)

  def update(self, step: int, result: dict, params, meta: dict) -> bool:
    """Saves params when `result` improves on the best; True when patience ran out."""
    if self.metric not in result:
      raise ValueError(
        f'early_stopping.metric={self.metric!r} is not an eval metric of this '
        f'task: use one of {sorted(result)}.'
      )
    value = float(result[self.metric])
    if self.value is None or (value > self.value if self.mode == 'max' else value < self.value):
      self.value, self.step, self.bad_evals = value, step, 0
      self._ckpt.save(step, params, {**meta, **self.meta(), 'metrics': result}, force=True)
      return False
    self.bad_evals += 1
    return bool(self.patience) and self.bad_evals >= self.patience

  def close(self):
    self._ckpt.close()


@dataclasses.dataclass
class Fit:
  state: Any
  eval: dict  # the last eval metrics ({} if none ran)
  stopped: Optional[str]  # None when all steps ran; the signal's name, StopFlag.request's reason
  # or the early-stopping reason
  best: Optional[Best]  # with config.early_stopping: the best metric's value and step


def fit(
  state,
  train_step: Callable,
  get_batch: Callable,
  config,
  workdir: str,
  *,
  writer=None,
  evaluate: Optional[Callable] = None,
  meta: Optional[Callable] = None,
  rate: tuple[str, float] = ('steps_per_sec', 1.0),
  eval_at_start: bool = False,
  stop: Optional[StopFlag] = None,
) -> Fit:
  """Resumes `state` from WORKDIR/checkpoints if it holds one, then trains to train.steps.

  `config` is any job's config (lm/defaults.py): train.steps, log_every, eval_every, the
  checkpoint policy, and early_stopping where the job has one (best params in WORKDIR/best).
  get_batch(step) -> sharded batch; evaluate(params) -> metrics ({} when stopped midway);
  meta(step) -> JSON saved beside each checkpoint (the step and the best record are added);
  rate: (name, units per step) for the logged throughput; eval_at_start: held-out figures
  before the first update of a fresh run. Without a `writer` (lm.report), fit opens and closes
  one on WORKDIR.
  """
  steps, log_every, eval_every = int(config.train.steps), config.log_every, config.eval_every
  ckpt = checkpoint.for_run(workdir, config)
  own_writer = writer is None
  writer = writer or report.Writer(workdir, steps, config)
  best = None
  if evaluate is not None and 'early_stopping' in config:
    es = config.early_stopping
    best = Best(os.path.join(workdir, 'best'), es.metric, es.mode, es.patience)
  stop = stop or StopFlag().install()
  meta = meta or (lambda step: {})
  last_ckpt, last_eval, stopped = None, {}, None
  restored = ckpt.restore(state)
  if restored:
    state, saved_meta, last_ckpt = restored
    if best is not None:
      best.load(saved_meta)
    extra = f' (best {best.metric}={best.value} at step {best.step})' if best else ''
    print(f'resumed from step {last_ckpt}{extra}')
  start = int(state.step)
  rate_name, per_step = rate

  def save_meta(step):
    return {**meta(step), 'step': step, **(best.meta() if best else {})}

  if eval_at_start and evaluate is not None and start == 0:
    writer.write(0, evaluate(state.params), 'eval')
  t0, timed, metrics = time.time(), 0, None
  # On a terminal: step, loss, throughput and time left; the log lines print above it.
  bar = progress.bar('train', steps, 'step', initial=start)
  with ckpt, bar:  # pending async saves land even if the loop raises
    for step in range(start, steps):
      state, metrics = train_step(state, get_batch(step))
      done, timed = step + 1, timed + 1
      bar.update(1)
      if itstime(done, log_every, steps):
        metrics = jax.device_get(metrics)
        check_finite(metrics, done, last_ckpt)
        rate = timed * per_step / (time.time() - t0)
        writer.write(done, {**metrics, rate_name: rate})
        bar.set_postfix_str(_postfix(metrics, rate_name, rate))
        t0, timed = time.time(), 0
      early = False
      if evaluate is not None and itstime(done, eval_every, steps):
        result = evaluate(state.params)
        if result:
          last_eval = result
          writer.write(done, result, 'eval')
          if best is not None:
            check_finite(jax.device_get(metrics), done, last_ckpt)
            early = best.update(done, result, state.params, save_meta(done))
      if ckpt.should_save(done) or stop.requested or early or done == steps:
        check_finite(jax.device_get(metrics), done, last_ckpt)  # never save a NaN state
        ckpt.save(done, state, save_meta(done), force=True)
        last_ckpt = done
      if early:
        stopped = f'early stopping: no {best.metric} improvement in {best.bad_evals} evaluations'
        progress.echo(f'{stopped}; best {best.metric}={best.value:.4f} at step {best.step}.')
        break
      if stop.requested:
        stopped = stop.signal
        progress.echo(f'{stop.signal}: saved step {done}, exiting.')
        break
  if best is not None:
    best.close()
  if own_writer:
    writer.close()
  return Fit(state, last_eval, stopped, best)


def _postfix(metrics: dict, rate_name: str, rate: float) -> str:
  """The bar's short summary: the loss (the first *loss metric when a job logs several) and
  the throughput."""
  loss = next((k for k in ('loss', *sorted(metrics)) if k.endswith('loss') and k in metrics), None)
  shown = f'{loss}={float(metrics[loss]):.4f} ' if loss else ''
  return f'{shown}{rate_name.replace("_per_sec", "/s")}={rate:,.0f}'
