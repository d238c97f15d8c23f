"""The only module that talks to orbax: its API moves between minor versions.

A checkpoint is two items: `state` (any pytree of arrays, restored onto the target's
shardings, so a run saved on one mesh restores onto another) and `meta` (JSON: step, data
position, config). Restores compare the saved tree and shapes with the target first, and
fall back to the newest readable step when the latest one is damaged. A save that fails
(disk full, directory gone) raises at the next save or wait, as a one-line CheckpointError
naming the directory when the disk refused it, and leaves no orbax thread holding the exit.
"""

import logging
import os
import threading
import warnings
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  pass


def release_stuck_saves():
  """Lets a failed async save's other threads end now. Each part of an orbax save runs in a
  thread that first waits for a signal from the part before it (the step directory created,
  say); when that part fails the signal never comes and the thread waits out orbax's
  coordination timeout, 300 s, holding the interpreter's exit. Cancels every such thread still
  alive and sends the signals it waits for: it then returns without running its part, and
  the coroutines it never ran are not reported at exit. (Orbax internals, checked on 0.12: a
  no-op if they move.)"""
  # pylint: disable=protected-access
  warnings.filterwarnings('ignore', r'coroutine .* was never awaited', RuntimeWarning)
  try:
    from orbax.checkpoint._src.futures import future as future_lib

    for t in threading.enumerate():
      if isinstance(t, future_lib._SignalingThread) and t.is_alive():
        t.cancel()
        future_lib.set_signals(t._receive_signals, operation_id=t._operation_id)
  except Exception as e:  # pylint: disable=broad-except
    log.warning('could not release pending orbax save threads: %s', e)


class _HideOrbaxLogs(logging.Filter):
  def filter(self, record):
    return record.levelno >= logging.CRITICAL or f'{os.sep}orbax{os.sep}' not in record.pathname


def hide_orbax_logs():
  """Drops orbax's own log records: it logs every file it writes, and each failure of a
  background save with its traceback before raising it, which this module then reports."""
  logging.getLogger('absl').addFilter(_HideOrbaxLogs())


def _key(entry) -> str:
  for attr in ('key', 'idx', 'name'):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def paths_and_shapes(tree) -> dict:
  """{'opt_state/1/0/mu/embed/...': shape}: one spelling for our dataclasses, tuples and
  named tuples and for the dicts and lists orbax's metadata turns them into."""
  is_leaf = lambda x: hasattr(x, 'shape') and not isinstance(x, (dict, list, tuple))
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
  return {'/'.join(_key(e) for e in p): tuple(getattr(x, 'shape', ())) for p, x in flat}


def compare_trees(saved: dict, target: dict, what: str = 'checkpoint'):
  """Raises naming every missing, unexpected or reshaped leaf: orbax would otherwise
  restore a changed model partially without complaint."""
  missing = sorted(set(target) - set(saved))
  extra = sorted(set(saved) - set(target))
  shapes = sorted(
    f'{k}: saved {saved[k]} vs model {target[k]}'
    for k in set(saved) & set(target)
    if tuple(saved[k]) != tuple(target[k])
  )
  if missing or extra or shapes:
    lines = (
      ([f'missing in {what}: {", ".join(missing[:8])}'] if missing else [])
      + ([f'not in model: {", ".join(extra[:8])}'] if extra else [])
      + ([f'shape mismatch: {"; ".join(shapes[:8])}'] if shapes else [])
    )
    raise CheckpointError(
      f'{what} does not match the model ({" | ".join(lines)}); '
      'check the model config matches the one the checkpoint was trained with.'
    )


class Checkpointer:
  """Periodic + preemption saves, keep-N, exact restore."""

  def __init__(
    self,
    directory: str,
    *,
    every: int = 1,
    keep: int = 3,
    async_save: bool = True,
    read_only: bool = False,
  ):
    self.directory = os.path.abspath(directory)
    self._partial = None  # `_partial_manager`, made on first use
    if read_only:
      options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    else:
      policy = cm.AnySavePolicy(
        [
          cm.PreemptionCheckpointingPolicy(),  # a custom policy replaces
          cm.FixedIntervalPolicy(max(int(every), 1)),
        ]
      )  # the default: keep both
      options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        save_decision_policy=policy,
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
      )
    try:
      self._mngr = ocp.CheckpointManager(
        self.directory,
        options=options,
        item_handlers={
          'state': ocp.StandardCheckpointHandler(),
          'meta': ocp.JsonCheckpointHandler(),
        },
      )
    except (PermissionError, OSError) as e:
      raise CheckpointError(
        f'cannot write checkpoints to {self.directory} ({e}); pass a writable --workdir.'
      ) from e

  def all_steps(self):
    return sorted(self._mngr.all_steps())

  def latest_step(self) -> Optional[int]:
    return self._mngr.latest_step()

  def should_save(self, step: int) -> bool:
    return self._mngr.should_save(step)

  def reached_preemption(self, step: int) -> bool:
    try:
      return bool(self._mngr.reached_preemption(step))
    except Exception:  # needs jax.distributed; a single process relies on its SIGTERM flag
      return False

  def _failed(self, e: Exception):
    """Called with a failed save's error: releases its stuck threads, and turns a write the
    disk refused (OSError) into one line naming the directory; the caller re-raises others."""
    release_stuck_saves()
    if isinstance(e, OSError):
      raise CheckpointError(
        f'saving a checkpoint in {self.directory} failed ({str(e).splitlines()[0]}): check '
        'that it is writable and has room, then run again to resume from the last checkpoint.'
      ) from e

  def save(self, step: int, state: Any, meta: dict, force: bool = False) -> bool:
    try:
      saved = self._mngr.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=force,
      )
      self._mngr.check_for_errors()  # an earlier async save that failed fails the run here
    except Exception as e:  # pylint: disable=broad-except
      self._failed(e)
      raise
    return saved

  def wait(self):
    """Blocks until async saves land; their errors are raised, never swallowed."""
    try:
      self._mngr.wait_until_finished()
      self._mngr.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      self._failed(e)
      raise

  def close(self):
    try:
      self.wait()
    finally:
      self._mngr.close()
      if self._partial is not None:
        self._partial.close()

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    """Pending async saves land even when the loop raised: nothing saved is lost and no
    orbax thread dies mid-write at interpreter exit. The loop's own error, if any, is the one
    reported (a failed save shows again when closing)."""
    if exc_type is None:
      self.close()
      return
    try:
      self.close()
    except Exception as e:  # pylint: disable=broad-except
      log.warning('closing the checkpoints in %s after an error: %s', self.directory, e)

  def read_meta(self, step: Optional[int] = None) -> tuple[dict, int]:
    """(meta, step) of `step` or the latest checkpoint, reading no arrays."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(
        f'no checkpoint in {self.directory}: train first, or pass the workdir of a finished run.'
      )
    out = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return out['meta'], step

  def saved_shapes(self, step: int) -> dict:
    meta = self._mngr.item_metadata(step)['state']
    tree = getattr(meta, 'tree', meta)
    return paths_and_shapes(tree)

  def restore(self, target: Any, step: Optional[int] = None, subtree: Optional[str] = None):
    """Restores onto `target` (arrays or jax.ShapeDtypeStructs with shardings).

    With `subtree` (e.g. 'params' of a saved TrainState), `target` is that subtree alone and
    only its arrays are read: orbax's partial restore, so nothing else of the checkpoint (the
    optimizer state) is ever loaded.

    Returns (state, meta, step), or None when there is nothing to restore. Without an
    explicit step, a damaged latest checkpoint is reported and the previous one is tried.
    """
    steps = [step] if step is not None else sorted(self.all_steps(), reverse=True)
    abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None)),
      target,
    )
    want = paths_and_shapes(abstract)
    for i, s in enumerate(steps):
      try:
        saved = self.saved_shapes(s)
        if subtree is not None:
          head = subtree + '/'
          saved = {k[len(head) :]: v for k, v in saved.items() if k.startswith(head)}
        compare_trees(saved, want, f'checkpoint step {s}' + (f' ({subtree})' if subtree else ''))
        if subtree is None:
          out = self._mngr.restore(
            s,
            args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
          )
          return out['state'], out['meta'], s
        out = self._partial_manager().restore(
          s,
          args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
              item={subtree: abstract},
              restore_args={subtree: ocp.checkpoint_utils.construct_restore_args(abstract)},
              partial_restore=True,
            ),
            meta=ocp.args.JsonRestore(),
          ),
        )
        return out['state'][subtree], out['meta'], s
      except CheckpointError:
        raise  # the model changed: an older step would not match either
      except Exception as e:  # pylint: disable=broad-except
        if step is not None or i == len(steps) - 1:
          raise CheckpointError(
            f'checkpoint step {s} in {self.directory} is unreadable ({e}); '
            'delete it or restore another step.'
          ) from e
        log.warning(
          'checkpoint step %d in %s is damaged (%s): falling back to step %d.',
          s,
          self.directory,
          type(e).__name__,
          steps[i + 1],
        )
        print(
          f'checkpoint step {s} is damaged ({type(e).__name__}); restoring step {steps[i + 1]}.'
        )
    return None

  def _partial_manager(self):
    """A read-only view of the same steps whose `state` handler takes a partial restore (the
    standard handler, which wrote them, does not: same format, another reader)."""
    if self._partial is None:
      self._partial = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(read_only=True, create=False),
        item_handlers={
          'state': ocp.PyTreeCheckpointHandler(),
          'meta': ocp.JsonCheckpointHandler(),
        },
      )
    return self._partial


def for_run(workdir: str, config) -> Checkpointer:
  """A training run's checkpoints: WORKDIR/checkpoints, policy from the config's
  checkpoint_every, keep_checkpoints and async_checkpoints."""
  return Checkpointer(
    os.path.join(workdir, 'checkpoints'),
    every=config.checkpoint_every,
    keep=config.keep_checkpoints,
    async_save=config.async_checkpoints,
  )


def job_meta(job: str, config, record: dict):
  """`loop.fit`'s meta for a job that trains a model: the job's name, the model record
  `lm.pretrained.load` rebuilds the model from (`lm.models.record`, plus the tokenizer file
  beside the checkpoints), the job's config and the data position."""
  fields = {
    'job': job,
    'record': {**record, 'tokenizer': 'tokenizer.json'},
    'config': config.to_json(),
  }
  return lambda step: {**fields, 'data_position': step}
