"""Re-executes the notebooks here and commits their outputs in place; `--check` finds stale ones.

  python colabs/execute.py                 # all of them, in ORDER, in one fresh LM_COLAB_WORKDIR
  python colabs/execute.py dpo rlhf        # some (each trains what it needs that is missing)
  python colabs/execute.py --check         # no execution: exit 1 naming each stale notebook

Each notebook runs top to bottom in a fresh Jupyter kernel (nbclient) on one CPU device, exactly
as tests/test_colabs.py runs it (it imports this file), so readers on the web see the outputs
and figures the suite checks. The executed notebook records a hash of its code cells; a notebook
whose code changed since (or whose outputs were cleared) is stale until re-executed. Tooling for
the repo, not the library: `lm` never imports it.
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time

import nbclient
import nbformat

COLABS = os.path.dirname(os.path.abspath(__file__))
# Later notebooks reuse the pretraining runs of earlier ones in the same LM_COLAB_WORKDIR.
ORDER = ['quickstart', 'finetune_classifier', 'generate_and_fewshot', 'dpo', 'rlhf']
WORKDIR_MARK = '$LM_COLAB_WORKDIR'  # replaces the run's temporary workdir in committed outputs


def notebooks() -> list:
  """Every notebook's name here: ORDER first, then the others by name."""
  names = [f[: -len('.ipynb')] for f in os.listdir(COLABS) if f.endswith('.ipynb')]
  return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def path(name: str) -> str:
  return os.path.join(COLABS, f'{name}.ipynb')


def code_hash(nb) -> str:
  """sha256 of the code cells' sources, in order: what the outputs were computed from."""
  sources = [c.source for c in nb.cells if c.cell_type == 'code']
  return hashlib.sha256(json.dumps(sources).encode('utf-8')).hexdigest()


def kernel_env(workdir) -> dict:
  """The kernel's environment: one CPU device (the test process simulates 8), figures rendered
  into the outputs without a display, runs under `workdir`."""
  env = {
    'XLA_FLAGS': '--xla_force_host_platform_device_count=1',
    'LM_COLAB_WORKDIR': str(workdir),
    'TF_CPP_MIN_LOG_LEVEL': '2',
  }
  try:
    import matplotlib_inline  # noqa: F401, PLC0415

    env['MPLBACKEND'] = 'module://matplotlib_inline.backend_inline'
  except ImportError:
    env['MPLBACKEND'] = 'Agg'
  return env


def execute(name: str, workdir, timeout: int = 600):
  """The notebook executed top to bottom in a fresh kernel (raises nbclient's CellExecutionError
  on any cell error), its code hash recorded in metadata['lm']."""
  nb = nbformat.read(path(name), as_version=4)
  env = kernel_env(workdir)
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)  # the kernel inherits this process's environment
  try:
    client = nbclient.NotebookClient(
      nb,
      timeout=timeout,
      kernel_name='python3',
      record_timing=False,  # per-cell timestamps would change every line of the diff
      coalesce_streams=True,  # one output per stream, as Jupyter shows it, not one per print
      resources={'metadata': {'path': COLABS}},
    )
    t0 = time.time()
    client.execute()
    print(f'{name}.ipynb: {time.time() - t0:.0f}s', flush=True)
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  nb.metadata['lm'] = {'executed_code_sha256': code_hash(nb)}
  return nb


def _hide_workdir(nb, workdir):
  """Shows the temporary workdir in text outputs as $LM_COLAB_WORKDIR (a stable diff)."""
  for c in nb.cells:
    for o in c.get('outputs', []):
      if 'text' in o:
        o['text'] = o['text'].replace(str(workdir), WORKDIR_MARK)
      if 'text/plain' in o.get('data', {}):
        o['data']['text/plain'] = o['data']['text/plain'].replace(str(workdir), WORKDIR_MARK)


def staleness(nb) -> list:
  """Why a committed notebook's outputs do not show its code (empty: they do)."""
  recorded = nb.metadata.get('lm', {}).get('executed_code_sha256')
  why = []
  if recorded is None:
    why.append('never executed by colabs/execute.py')
  elif recorded != code_hash(nb):
    why.append('its code cells changed since it was executed')
  cells = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == 'code']
  not_run = [i for i, c in cells if c.execution_count is None]
  no_figure = [
    i
    for i, c in cells
    if 'plt.show()' in c.source and not any('image/png' in o.get('data', {}) for o in c.outputs)
  ]
  if not_run:
    why.append(f'cells {not_run} have not run')
  if no_figure:
    why.append(f'cells {no_figure} show no figure')
  return why


def stale_message(name: str, why: list) -> str:
  return f'colabs/{name}.ipynb is stale ({"; ".join(why)}): run `python colabs/execute.py {name}`'


def check(names) -> int:
  """Prints each stale notebook with its fix; the number of stale notebooks."""
  stale = 0
  for name in names:
    why = staleness(nbformat.read(path(name), as_version=4))
    if why:
      stale += 1
      print(stale_message(name, why))
  return stale


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('names', nargs='*', help=f'notebooks (default: all, in order: {ORDER})')
  parser.add_argument('--check', action='store_true', help='only report stale notebooks')
  parser.add_argument('--workdir', help='LM_COLAB_WORKDIR (default: a fresh temporary directory)')
  args = parser.parse_args(argv)
  names = args.names or notebooks()
  unknown = sorted(set(names) - set(notebooks()))
  if unknown:
    parser.error(f'no such notebooks in {COLABS}: {unknown}')
  if args.check:
    return 1 if check(names) else 0
  workdir = args.workdir or tempfile.mkdtemp(prefix='lm_colab_')
  print(f'LM_COLAB_WORKDIR={workdir}', flush=True)
  for name in sorted(names, key=notebooks().index):
    nb = execute(name, workdir)
    _hide_workdir(nb, workdir)
    nbformat.write(nb, path(name))
  return 0


if __name__ == '__main__':
  sys.exit(main())
