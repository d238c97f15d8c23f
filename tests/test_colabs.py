"""Executes every colabs/*.ipynb top to bottom (nbclient) and checks what it shows; checks that
the committed notebooks carry the outputs of their current code.

Each notebook runs through colabs/execute.py (the command that refreshes the committed outputs)
in a fresh Jupyter kernel from this Python, on one CPU device, writing under a temporary
LM_COLAB_WORKDIR shared by the notebooks of one session (so the fine-tuning and DPO notebooks
reuse the pretraining runs of the quickstart and the generation notebook, as they do for a user
who runs them in order). Any cell error fails the test.
"""

import importlib.util
import json
import os

import pytest

from conftest import ROOT, check_fewshot_accuracy

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

_spec = importlib.util.spec_from_file_location(
  'colab_execute', os.path.join(ROOT, 'colabs', 'execute.py')
)
colab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(colab)
NOTEBOOKS = colab.notebooks()


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  return tmp_path_factory.mktemp('colabs')


def _read(name):
  return nbformat.read(colab.path(name), as_version=4)


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


def test_notebooks_start_with_a_description():
  assert set(colab.ORDER) <= set(NOTEBOOKS), f'missing: {set(colab.ORDER) - set(NOTEBOOKS)}'
  for name in NOTEBOOKS:
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == 'markdown' and nb.cells[0].source.startswith('# '), name
    src = '\n'.join(c.source for c in nb.cells if c.cell_type == 'code')
    assert 'get_config(' in src and 'LM_COLAB_WORKDIR' in src, name


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_committed_outputs_are_current(name):
  """The committed outputs were computed from the committed code (every code cell ran, and its
  figures are there): a reader on the web sees what the notebook does."""
  why = colab.staleness(_read(name))
  assert not why, colab.stale_message(name, why)


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_plotting_notebooks_commit_a_figure(name):
  nb = _read(name)
  if any('plt.' in c.source for c in nb.cells if c.cell_type == 'code'):
    assert _images(nb) >= 1, f'{name}.ipynb plots but commits no image/png output'


def test_staleness_check_fails_on_an_edited_notebook(tmp_path, monkeypatch, capsys):
  """The check can fail: a copy of a committed notebook passes `execute.py --check`; the same
  with one code cell edited fails it (exit 1), named with the command that refreshes it."""
  name = colab.ORDER[0]
  monkeypatch.setattr(colab, 'COLABS', str(tmp_path))  # colab.path(name) now points there
  nb = nbformat.read(os.path.join(ROOT, 'colabs', f'{name}.ipynb'), as_version=4)
  nbformat.write(nb, colab.path(name))
  assert colab.main(['--check', name]) == 0, capsys.readouterr().out
  [c for c in nb.cells if c.cell_type == 'code'][-1].source += '\nprint(1)'
  nbformat.write(nb, colab.path(name))
  assert colab.main(['--check', name]) == 1
  out = capsys.readouterr().out
  assert out == (
    f'colabs/{name}.ipynb is stale (its code cells changed since it was executed): '
    f'run `python colabs/execute.py {name}`\n'
  ), out


def test_staleness_check_fails_on_cleared_outputs():
  """Same code, outputs cleared (the old convention): the cells that did not run are named, and
  those whose figures are missing."""
  nb = _read(colab.ORDER[0])
  code = [i for i, c in enumerate(nb.cells) if c.cell_type == 'code']
  plots = [i for i in code if 'plt.show()' in nb.cells[i].source]
  assert plots, 'the quickstart plots'
  for i in code:
    nb.cells[i].outputs, nb.cells[i].execution_count = [], None
  assert colab.staleness(nb) == [f'cells {code} have not run', f'cells {plots} show no figure']


@pytest.mark.slow
@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_runs(name, workdir):
  nb = colab.execute(name, workdir)
  nbformat.write(nb, workdir / f'{name}.executed.ipynb')  # to look at
  assert colab.staleness(nb) == [], name  # every cell ran, every plt.show() drew
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
