"""What every command-line entry point shares: flag parsing and one-line errors.

A user's mistake (bad config key, missing data, empty corpus, mismatched checkpoint, NaN
loss) ends the run with one line naming the problem and the fix, not a traceback. Only errors
our own code raised on purpose are shortened so: one raised inside a library (jax, flax, optax,
orbax, numpy...), a ValueError from JAX tracing included, is a bug to report and keeps its
traceback (`raised_by_us`).
"""

import dis
import os
import re
import sys
from typing import Optional

from absl import app
from absl import flags
from absl import logging

from lm import checkpoint
from lm import distributed
from lm import report
from lm.checkpoint import CheckpointError
from lm.data import sources

USER_ERRORS = (
  ValueError,
  FileNotFoundError,
  NotADirectoryError,
  PermissionError,
  CheckpointError,
  FloatingPointError,
)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = ('lm', 'configs')  # with the entry scripts at ROOT: where our deliberate raises live


def _is_our_file(filename: str) -> bool:
  path = os.path.abspath(filename)
  parts = path.split(os.sep)
  if 'site-packages' in parts or 'dist-packages' in parts or not path.startswith(ROOT + os.sep):
    return False
  rel = os.path.relpath(path, ROOT).split(os.sep)
  return len(rel) == 1 or rel[0] in OURS


def raised_by_us(e: BaseException) -> bool:
  """Whether `e` was raised by a `raise` in lm/, configs/ or an entry script, judged by the
  innermost frame of its traceback (a `raise ... from e` of ours is ours).

  JAX's traceback filtering drops its own frames, leaving our line that called into JAX
  innermost: then only a frame stopped at a raise instruction counts as ours."""
  if type(e.__cause__).__name__ == 'UnfilteredStackTrace':  # JAX_TRACEBACK_FILTERING=remove_frames
    return raised_by_us(e.__cause__)
  tb = e.__traceback__
  if tb is None:
    return False
  while tb.tb_next is not None:
    tb = tb.tb_next
  code = tb.tb_frame.f_code
  if not _is_our_file(code.co_filename):
    return False
  if any('JAX has removed its internal frames' in n for n in getattr(e, '__notes__', ())):
    op = code.co_code[tb.tb_lasti] if 0 <= tb.tb_lasti < len(code.co_code) else None
    return op is not None and dis.opname[op] in ('RAISE_VARARGS', 'RERAISE')
  return True


def _fail(msg: str):
  print(f'{os.path.basename(sys.argv[0])}: error: {msg}', file=sys.stderr, flush=True)
  sys.exit(2)


def parse_flags(argv):
  """absl flag parsing, with a bad `--config.a.b=v` key reported on one line."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # ml_collections: unknown field in an override
    text = str(e).replace('\\n', ' ')
    key = (re.findall(r'\w+', text) or ['?'])[0]
    hint = re.search(r'Did you mean "\w+"', text)
    arg = next((a for a in argv if re.match(rf'--config\.(\w+\.)*{key}\b', a)), '--config override')
    _fail(
      f'unknown config key {key!r} in {arg}'
      + (f' ({hint.group(0).lower()}?)' if hint else '')
      + '; the config file lists the valid keys.'
    )
  except flags.Error as e:
    _fail(f'{e}. Run with --helpfull to list the flags.')


def writable_dir(path: str, flag: str = '--workdir') -> str:
  """Creates `path` and proves it writable before any work is done."""
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f'.write_test_{os.getpid()}')
    open(probe, 'w').close()
    os.remove(probe)
  except OSError as e:
    raise PermissionError(f'cannot write to {path} ({e.strerror}): pass a writable {flag}.') from e
  return path


# Config keys that were renamed: old -> new, in every job and in one job's entry point. A locked
# config rejects an old key inside the flag parser with an obscure error, so `run` names the new
# one first.
RENAMED_CONFIG_KEYS = {'pretrained': 'init_checkpoint'}
RENAMED_IN_SCRIPT = {'dpo.py': {'task': 'objective'}}


def renamed(script: str = '') -> dict:
  return {**RENAMED_CONFIG_KEYS, **RENAMED_IN_SCRIPT.get(os.path.basename(script), {})}


def renamed_key_error(argv, script: str = '') -> Optional[str]:
  """The one-line error for the first `--config.<renamed key>[=value]` in `argv`, or None."""
  keys = renamed(script)
  for arg in argv:
    m = re.match(r'--config\.(\w+)(=.*)?$', arg)
    if m and m.group(1) in keys:
      new = keys[m.group(1)]
      return f'{arg}: config.{m.group(1)} was renamed: use --config.{new}{m.group(2) or "=..."}.'
  return None


def check_renamed(config, script: str = '') -> None:
  """Raises ValueError (one line) for a config built with a renamed key (a notebook's, or an
  old config file's)."""
  for old, new in renamed(script).items():
    if old in config:
      raise ValueError(f'config.{old} was renamed: set config.{new} instead.')


def run_job(job):
  """The program of a training entry point: job(FLAGS.config, FLAGS.workdir) after the
  multi-host start-up, which must come before any other JAX call."""

  def main(argv):
    del argv
    distributed.initialize()
    report.check(flags.FLAGS.config)  # a missing optional tracker fails before any work
    job(flags.FLAGS.config, flags.FLAGS.workdir)

  run(main)


def run(main):
  """app.run(main) with quiet library logs and one-line errors for the mistakes our code
  reports (`raised_by_us`); any other exception keeps its traceback."""

  def guarded(argv):
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.ERROR)  # orbax logs every file it writes, and read-only notes
      checkpoint.hide_orbax_logs()  # and a failed save's traceback, which we report in one line
    try:
      main(argv)
    except USER_ERRORS as e:
      if not raised_by_us(e):
        raise  # a library's error: a bug, whose traceback is what to report
      _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)

  msg = sources.argv_error(sys.argv[1:]) or renamed_key_error(sys.argv[1:], sys.argv[0])
  if msg:
    _fail(msg)
  app.run(guarded, flags_parser=parse_flags)
