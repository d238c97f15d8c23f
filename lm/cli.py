"""What every command-line entry point shares: flag parsing and one-line errors.

A user's mistake (bad config key, missing data, empty corpus, mismatched checkpoint, NaN
loss) ends the run with one line naming the problem and the fix, not a traceback.
"""

import os
import re
import sys

from absl import app
from absl import flags
from absl import logging

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


def run_job(job):
  """The program of a training entry point: job(FLAGS.config, FLAGS.workdir) after the
  multi-host start-up, which must come before any other JAX call."""
  from lm import distributed  # pylint: disable=g-import-not-at-top

  def main(argv):
    del argv
    distributed.initialize()
    job(flags.FLAGS.config, flags.FLAGS.workdir)

  run(main)


def run(main):
  """app.run(main) with quiet library logs and one-line errors for user mistakes."""

  def guarded(argv):
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.ERROR)  # orbax logs every file it writes, and read-only notes
    try:
      main(argv)
    except USER_ERRORS as e:
      _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)

  msg = sources.argv_error(sys.argv[1:])  # ml_collections would reject an old key obscurely
  if msg:
    _fail(msg)
  app.run(guarded, flags_parser=parse_flags)
