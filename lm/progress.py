"""Progress of the phases that take more than a few seconds (preparing data, training,
evaluating, generating, scoring): a tqdm bar with its rate and time left when stderr is a
terminal, and nothing more when it is not (CI, a log file, a pipe, a notebook): there, the
plain log lines each job always printed are the whole output.

One switch: ``LM_PROGRESS=0`` turns the bars off on a terminal too (``LM_PROGRESS=1`` draws
them whatever stderr is). Only process 0 draws. A line printed while a bar is live goes
through :func:`echo`, above the bar, so the two never tear each other.
"""

import os
import sys
from typing import Iterable, Optional

# With a known total the bar says how much time is left in words; without one, the rate only.
_FORMAT = '{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed} elapsed, {remaining} left, {rate_fmt}{postfix}]'
_FORMAT_NO_TOTAL = '{desc}: {n_fmt} [{elapsed} elapsed, {rate_fmt}{postfix}]'
_live = []  # the bars drawn now, innermost last


def enabled() -> bool:
  """Whether bars are drawn: LM_PROGRESS, else whether stderr is a terminal; process 0 only."""
  mode = os.environ.get('LM_PROGRESS', '').strip().lower()
  if mode in ('0', 'off', 'false', 'no'):
    return False
  if mode not in ('1', 'on', 'true', 'yes') and not _isatty(sys.stderr):
    return False
  import jax  # pylint: disable=g-import-not-at-top  # asked only on a terminal: cheap elsewhere

  return jax.process_index() == 0


def _isatty(stream) -> bool:
  try:
    return stream.isatty()
  except (AttributeError, ValueError):  # replaced or closed streams
    return False


class _Off:
  """What a caller holds when bars are off: every call does nothing."""

  n = 0

  def update(self, n: int = 1):
    self.n += n

  def set_postfix_str(self, s: str = '', refresh: bool = True):
    pass

  def close(self):
    pass

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class _Bar:
  """A tqdm bar that leaves the live list when closed (so `echo` knows whether one is drawn)."""

  def __init__(self, **kwargs):
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top

    self._tqdm = tqdm(**kwargs)
    _live.append(self)

  @property
  def n(self):
    return self._tqdm.n

  def update(self, n: int = 1):
    self._tqdm.update(n)

  def set_postfix_str(self, s: str = '', refresh: bool = True):
    self._tqdm.set_postfix_str(s, refresh=refresh)

  def close(self):
    if self in _live:
      _live.remove(self)
      self._tqdm.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def bar(
  desc: str,
  total: Optional[float] = None,
  unit: str = 'it',
  initial: float = 0,
  bytes_: bool = False,
):
  """A progress bar for `total` units (None: unknown, no time left), starting at `initial`
  (a resumed phase). An outermost bar stays on screen when done; one nested in another (an
  eval inside training) goes. `bytes_`: the units are bytes (k/M/G prefixes)."""
  if not enabled():
    return _Off()
  leave = not _live
  return _Bar(
    desc=desc,
    total=total,
    unit='B' if bytes_ else unit,
    unit_scale=bytes_,
    unit_divisor=1024 if bytes_ else 1000,
    initial=initial,
    leave=leave,
    dynamic_ncols=True,
    file=sys.stderr,
    position=len(_live),
    bar_format=_FORMAT if total else _FORMAT_NO_TOTAL,
    smoothing=0,  # the mean rate so far: steps are dispatched ahead and block in bursts
  )


def track(items: Iterable, desc: str, total: Optional[int] = None, unit: str = 'batch'):
  """`items`, counted on a bar drawn from the first item on; the iterable itself, untouched,
  when bars are off. `total` defaults to len(items)."""
  if not enabled():
    return items
  if total is None and hasattr(items, '__len__'):
    total = len(items)
  return _tracked(items, desc, total, unit)


def _tracked(items, desc, total, unit):
  with bar(desc, total, unit) as b:  # drawn from the first item on
    for x in items:
      yield x
      b.update(1)


def echo(line: str):
  """print(line), above the live bars when there are any."""
  if _live:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top

    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()
  else:
    print(line, flush=True)
