"""Executes every colabs/*.ipynb top to bottom (nbclient) and checks what it shows.

Each notebook runs in a fresh Jupyter kernel from this Python, on one CPU device, writing under
a temporary LM_COLAB_WORKDIR shared by the notebooks of one session (so the fine-tuning and DPO
notebooks reuse the pretraining runs of the quickstart and the generation notebook, as they do
for a user who runs them in order). Any cell error fails the test.
"""

import glob
import json
import os
import time

import pytest

from conftest import check_fewshot_accuracy

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLABS = os.path.join(ROOT, 'colabs')
ORDER = ['quickstart', 'finetune_classifier', 'generate_and_fewshot', 'dpo', 'rlhf']  # reuse runs
NOTEBOOKS = sorted(
  (os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(COLABS, '*.ipynb'))),
  key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n),
)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  return tmp_path_factory.mktemp('colabs')


def _kernel_env(workdir):
  env = {
    'XLA_FLAGS': '--xla_force_host_platform_device_count=1',  # conftest sets 8 for this process
    'LM_COLAB_WORKDIR': str(workdir),
    'TF_CPP_MIN_LOG_LEVEL': '2',
  }
  try:  # render figures into the outputs (checked below) without any display
    import matplotlib_inline  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

    env['MPLBACKEND'] = 'module://matplotlib_inline.backend_inline'
  except ImportError:
    env['MPLBACKEND'] = 'Agg'
  return env


def execute(name, workdir):
  """The executed notebook; raises nbclient's CellExecutionError on any cell error."""
  nb = nbformat.read(os.path.join(COLABS, f'{name}.ipynb'), as_version=4)
  env = _kernel_env(workdir)
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)  # the kernel inherits this process's environment
  try:
    client = nbclient.NotebookClient(
      nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': COLABS}}
    )
    t0 = time.time()
    client.execute()
    print(f'{name}.ipynb: {time.time() - t0:.0f}s')
  finally:
    nbformat.write(nb, os.path.join(str(workdir), f'{name}.executed.ipynb'))  # to look at
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  return nb


def _images(nb) -> int:
  return sum(
    'image/png' in o.get('data', {})
    for c in nb.cells
    if c.cell_type == 'code'
    for o in c.get('outputs', [])
  )


def _metrics(path):
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def _series(rows, key):
  return [r[key] for r in rows if key in r]


def test_notebooks_are_clean_and_start_with_a_description():
  assert set(ORDER) <= set(NOTEBOOKS), f'missing notebooks: {set(ORDER) - set(NOTEBOOKS)}'
  for name in NOTEBOOKS:
    nb = nbformat.read(os.path.join(COLABS, f'{name}.ipynb'), as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == 'markdown' and nb.cells[0].source.startswith('# '), name
    for c in nb.cells:
      if c.cell_type == 'code':
        assert not c.outputs and c.execution_count is None, f'{name}: commit with outputs cleared'
    src = '\n'.join(c.source for c in nb.cells if c.cell_type == 'code')
    assert 'get_config(' in src and 'LM_COLAB_WORKDIR' in src, name


@pytest.mark.slow
@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_runs(name, workdir):
  nb = execute(name, workdir)
  if name in ORDER:
    assert _images(nb) >= 1, f'{name}.ipynb showed no plot'
  check = CHECKS.get(name)
  if check:
    check(workdir)


def _check_quickstart(workdir):
  rows = _metrics(workdir / 'bert' / 'metrics.jsonl')
  loss = _series(rows, 'train/mlm_loss')
  assert len(loss) >= 10
  assert loss[-1] < loss[0] - 1.0, f'MLM loss did not fall: {loss[0]:.2f} -> {loss[-1]:.2f}'
  assert _series(rows, 'eval/mlm_loss')[-1] < loss[0] - 1.0


def _check_finetune(workdir):
  rows = _metrics(workdir / 'finetune_cls' / 'metrics.jsonl')
  assert len(_series(rows, 'eval/accuracy')) >= 3
  # The kept best params on the test split (nothing was chosen on it) against the majority
  # class of that split, recounted from the per-example predictions.
  from lm.jobs import finetune  # noqa: PLC0415

  results, predictions = finetune.evaluate(str(workdir / 'finetune_cls'))
  gold = [p['label'] for p in predictions]
  majority = max(map(gold.count, set(gold))) / len(gold)
  acc = sum(p['prediction'] == p['label'] for p in predictions) / len(predictions)
  assert results['split'] == 'test' and results['accuracy'] == pytest.approx(acc)
  assert acc > majority + 0.1, f'test accuracy {acc:.3f} vs majority class {majority:.3f}'


def _check_fewshot(workdir):
  with open(workdir / 'fewshot_results.json', encoding='utf-8') as f:
    result = json.load(f)
  assert set(result['strategies']) == {
    'random',
    'similarity',
    'diversity',
    'difficulty',
    'gradient',
  }
  check_fewshot_accuracy(result)
  assert result['num_test'] == len(result['examples']) > 0


def _check_dpo(workdir):
  rows = _metrics(workdir / 'dpo' / 'metrics.jsonl')
  margin = _series(rows, 'eval/reward_margin')
  acc = _series(rows, 'eval/reward_accuracy')
  assert margin[0] == pytest.approx(0.0, abs=1e-4)  # step 0: the policy is the reference
  assert margin[-1] > 0.05, f'held-out reward margin did not widen: {margin}'
  assert acc[-1] > 0.6, f'held-out reward accuracy {acc}'


def _check_rlhf(workdir):
  sft = _series(_metrics(workdir / 'sft' / 'metrics.jsonl'), 'eval/loss')
  assert sft[-1] < sft[0] - 0.2, f'held-out response loss {sft}'  # measured 6.68 -> 6.31
  rm = [r for r in _metrics(workdir / 'reward' / 'metrics.jsonl') if 'test/accuracy' in r][-1]
  assert rm['test/accuracy'] > 0.6, rm  # chance 0.5; measured 0.69 on 134 test pairs
  rows = _metrics(workdir / 'ppo' / 'metrics.jsonl')
  kl = _series(rows, 'eval/kl')
  assert kl[0] == 0.0 and kl[-1] > 0.1, kl  # step 0: the policy is the reference; then it moves
  test = [r for r in rows if 'test/score' in r][-1]
  assert test['test/best_of_n'] == 4 and test['test/kl'] > 0.1, test


CHECKS = {
  'quickstart': _check_quickstart,
  'finetune_classifier': _check_finetune,
  'generate_and_fewshot': _check_fewshot,
  'dpo': _check_dpo,
  'rlhf': _check_rlhf,
}
