"""Errors (issue 15): our deliberate errors are one line, a library's keep their traceback;
early-stopping settings fail before any work; data.eval_fraction=0 means no evaluation, said
once; a failed checkpoint save ends the run at once instead of after orbax's 300 s timeout."""

import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_script
from test_train import TINY, read_metrics

from lm import cli
from lm import defaults
from lm.jobs import dpo
from lm.jobs import finetune
from lm import pretrained
from lm import tasks

NO_EVAL = 'data.eval_fraction=0: no held-out evaluation.'


def run_python(code, *args, timeout=120):
  """`code` as a script in a fresh process at the repo root, with one CPU device."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1', PYTHONPATH=ROOT)
  return subprocess.run(
    [sys.executable, '-c', code, *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def error_lines(stderr: str, prog: str):
  """The lines of `stderr` that report an error (other lines: a library's warnings)."""
  return [l for l in stderr.splitlines() if l.startswith((f'{prog}: error', 'Traceback'))]


# ------------------------------------------------------------------------------------------------
# One line for our errors, a traceback for a library's.


def _raise_from(filename: str, src: str, *args):
  """Runs f(*args) of `src` compiled as if it were the file `filename`; returns what it raised."""
  ns = {}
  exec(compile(src, filename, 'exec'), ns)  # pylint: disable=exec-used
  try:
    ns['f'](*args)
  except Exception as e:  # pylint: disable=broad-except
    return e
  raise AssertionError('f did not raise')


OURS = os.path.join(ROOT, 'lm', 'fake_module.py')


def test_raised_by_us_is_judged_by_the_raising_frame():
  assert cli.raised_by_us(_raise_from(OURS, 'def f():\n  raise ValueError("bad key")\n'))
  chained = 'def f():\n  try:\n    int("x")\n  except ValueError as e:\n    raise ValueError("ours") from e\n'
  assert cli.raised_by_us(_raise_from(OURS, chained))
  script = os.path.join(ROOT, 'train.py')  # an entry script
  assert cli.raised_by_us(_raise_from(script, 'def f():\n  raise ValueError("x")\n'))
  elsewhere = os.path.join(ROOT, 'tests', 'fake.py')
  assert not cli.raised_by_us(_raise_from(elsewhere, 'def f():\n  raise ValueError("x")\n'))
  lib = os.path.join(ROOT, '.venv', 'lib', 'site-packages', 'lm', 'fake.py')
  assert not cli.raised_by_us(_raise_from(lib, 'def f():\n  raise ValueError("x")\n'))
  import numpy as np  # a library raising below our line

  err = _raise_from(OURS, 'import numpy as np\ndef f():\n  np.reshape(np.ones(3), (2, 2))\n')
  assert isinstance(err, ValueError) and not cli.raised_by_us(err)
  del np


def test_jax_tracing_errors_are_not_ours():
  """JAX's traceback filtering leaves our calling line innermost: a shape error JAX raised is
  still its own, a ValueError our traced code raised is ours."""
  import jax
  import jax.numpy as jnp

  theirs = 'import jax\ndef g(x):\n  return jax.lax.squeeze(x, (0,))\n'
  err = _raise_from(OURS, theirs + 'def f(x):\n  return jax.jit(g)(x)\n', jnp.ones((2, 3)))
  assert isinstance(err, ValueError), err
  assert not cli.raised_by_us(err)
  ours = 'import jax\ndef g(x):\n  raise ValueError("num_heads must divide hidden_size")\n'
  err = _raise_from(OURS, ours + 'def f(x):\n  return jax.jit(g)(x)\n', jnp.ones(3))
  assert isinstance(err, ValueError) and cli.raised_by_us(err), err
  del jax


MAIN = """
import sys
from lm import cli

def main(argv):
  import jax, jax.numpy as jnp
  from lm import defaults, losses, optim
  if sys.argv[1] == 'schedule':
    train = defaults.train_block(schedule='cosinee')
    optim.make(train)
  else:  # a shape mismatch inside a jitted function of ours: JAX raises the ValueError
    jax.jit(losses.cross_entropy_sums)(jnp.ones((2, 5)), jnp.zeros((3,), int), jnp.ones(2))

sys.argv[0] = 'tiny.py'
cli.run(main)
"""


def test_our_value_error_is_one_line():
  out = run_python(MAIN, 'schedule')
  assert out.returncode == 2, out.stderr[-3000:]
  assert error_lines(out.stderr, 'tiny.py') == [
    "tiny.py: error: train.schedule='cosinee': use one of ['constant', 'cosine', 'linear']."
  ], out.stderr[-3000:]


def test_jax_value_error_keeps_its_traceback():
  out = run_python(MAIN, 'jax')
  assert out.returncode == 1, out.stderr[-3000:]
  assert 'Traceback (most recent call last)' in out.stderr
  assert 'ValueError' in out.stderr and 'tiny.py: error' not in out.stderr, out.stderr[-3000:]


# ------------------------------------------------------------------------------------------------
# Early stopping, checked before any work.


def _no_model_load(monkeypatch):
  def fail(*a, **k):
    raise AssertionError('pretrained.load ran: the check came too late')

  monkeypatch.setattr(pretrained, 'load', fail)


def _finetune_config(task='classification', **es):
  c = defaults.finetuning(task)
  c.init_checkpoint = '/nonexistent/pretrained'
  c.early_stopping.update(es)
  return c


@pytest.mark.parametrize(
  'task,es,needles',
  [
    ('classification', dict(mode='maximum'), ["early_stopping.mode='maximum'", "'max' or 'min'"]),
    ('qa', dict(metric='accuracy'), ["early_stopping.metric='accuracy'", 'f1, exact_match, loss']),
    ('tokens', dict(metric='F1'), ["'F1'", 'f1, precision, recall, accuracy, loss']),
    ('classification', dict(metric='loss', mode='max'), ["mode='min'"]),
    ('classification', dict(patience=-1), ['patience=-1']),
  ],
)
def test_early_stopping_typos_fail_before_any_work(monkeypatch, tmp_path, task, es, needles):
  _no_model_load(monkeypatch)
  with pytest.raises(ValueError) as e:
    finetune.run(_finetune_config(task, **es), str(tmp_path / 'w'))
  for n in needles:
    assert n in str(e.value), str(e.value)
  assert not (tmp_path / 'w').exists()


def test_default_metric_is_one_the_task_reports():
  """QA reports f1 and exact_match, not accuracy: every task's default (and every shipped
  config's choice) is among its METRICS."""
  for name in tasks.BUILTIN:
    task_mod = tasks.get(name)
    assert defaults.finetuning(name).early_stopping.metric == task_mod.METRICS[0]
  import importlib

  for name in ('finetune_cls', 'finetune_qa', 'finetune_tokens'):
    c = importlib.import_module(f'configs.{name}').get_config()
    assert c.early_stopping.metric in tasks.reported_metrics(tasks.get(c.task)), name


def test_a_task_without_metrics_is_checked_at_its_first_eval(monkeypatch, tmp_path):
  """METRICS is optional: a custom task without it passes the start-up check."""
  from lm import loop

  loop.check_early_stopping('my_metric', 'max', 0, reported=None)
  best = loop.Best(str(tmp_path / 'best'), 'my_metric')
  with pytest.raises(ValueError, match="early_stopping.metric='my_metric'.*accuracy"):
    best.update(1, {'accuracy': 0.5}, {}, {})
  best.close()


def test_no_held_out_data_and_patience_fail_before_any_work(monkeypatch, tmp_path):
  _no_model_load(monkeypatch)
  c = _finetune_config(patience=3)
  c.data.eval_fraction = 0.0
  with pytest.raises(ValueError, match='early_stopping.patience=3 needs held-out evaluation'):
    finetune.run(c, str(tmp_path / 'w'))


# ------------------------------------------------------------------------------------------------
# data.eval_fraction=0: no evaluation, said once.


def write_corpus(path, n=200):
  import random

  rng = random.Random(0)
  words = 'alpha beta gamma delta the of list dict value return raise yield lambda class'.split()
  docs = [
    ' '.join(rng.choice(words) for _ in range(rng.randint(20, 80))) + f' doc{i}.' for i in range(n)
  ]
  path.write_text('\n\n'.join(docs) + '\n')
  return path


TINY_GPT = [
  '--config=configs/gpt_base.py',
  *TINY,
  '--config.data.source=files',
  '--config.data.prepare_workers=0',
  '--config.train.steps=4',
  '--config.train.warmup_steps=1',
  '--config.log_every=1',
  '--config.eval_batches=1',
  '--config.sample_tokens=8',
]


@pytest.fixture(scope='module')
def no_eval_run(tmp_path_factory):
  """A tiny GPT pretraining run with data.eval_fraction=0 and an evaluation due every 2 steps."""
  tmp = tmp_path_factory.mktemp('no_eval')
  corpus = write_corpus(tmp / 'corpus.txt')
  workdir = tmp / 'w'
  proc = run_script(
    'train.py',
    *TINY_GPT,
    f'--config.data.files={corpus}',
    '--config.data.eval_fraction=0',
    '--config.eval_every=2',
    f'--workdir={workdir}',
  )
  return workdir, proc.stdout


@pytest.mark.slow
def test_pretraining_without_held_out_data_does_not_evaluate(no_eval_run):
  workdir, stdout = no_eval_run
  assert stdout.count(NO_EVAL) == 1, stdout
  assert read_metrics(workdir, 'eval') == {}
  assert sorted(read_metrics(workdir)) == [1, 2, 3, 4]
  from lm.jobs import pretrain  # noqa: PLC0415

  with pytest.raises(ValueError, match='data.eval_fraction=0: nothing held out') as e:
    pretrain.evaluate(str(workdir))
  assert len(str(e.value).splitlines()) == 1


@pytest.mark.slow
def test_finetuning_and_reward_model_without_held_out_data(no_eval_run, tmp_path, capsys):
  workdir, _ = no_eval_run
  c = defaults.finetuning('classification')
  c.update(init_checkpoint=str(workdir), num_devices=1, eval_every=1, log_every=1)
  c.data.update(eval_fraction=0.0, max_len=32, max_train_examples=64)
  c.train.update(steps=2, warmup_steps=1, batch_size=8)
  out = finetune.run(c, str(tmp_path / 'ft'))
  assert out['best'] is None and out['final'] == {}
  assert capsys.readouterr().out.count(NO_EVAL) == 1
  assert read_metrics(tmp_path / 'ft', 'eval') == {} and read_metrics(tmp_path / 'ft')
  with pytest.raises(ValueError, match='no held-out data to evaluate'):
    finetune.evaluate(str(tmp_path / 'ft'), split='validation')

  proc = run_script(
    'dpo.py',
    '--config=configs/reward.py',
    f'--config.init_checkpoint={workdir}',
    '--config.data.eval_fraction=0',
    '--config.data.max_pairs=64',
    '--config.data.seq_len=32',
    '--config.data.max_prompt_len=16',
    '--config.train.steps=2',
    '--config.train.batch_size=4',
    '--config.eval_every=1',
    '--config.log_every=1',
    f'--workdir={tmp_path / "rm"}',
  )
  assert proc.stdout.count(NO_EVAL) == 1, proc.stdout
  assert read_metrics(tmp_path / 'rm', 'eval') == {} and read_metrics(tmp_path / 'rm')


# ------------------------------------------------------------------------------------------------
# A failed checkpoint save.

BREAK_SAVES = """
import runpy, shutil, sys, time
from lm import checkpoint

save = checkpoint.Checkpointer.save

def breaking_save(self, step, *a, **k):
  if step == 4 and self.directory.endswith('checkpoints'):  # the disk goes away after step 2
    self.wait()
    shutil.rmtree(self.directory)
    open(self.directory, 'w').write('not a directory')
    print('BROKEN', time.time(), flush=True)
  return save(self, step, *a, **k)

checkpoint.Checkpointer.save = breaking_save
sys.argv = ['train.py'] + sys.argv[1:]
runpy.run_path('train.py', run_name='__main__')
"""


@pytest.mark.slow  # the fast tier keeps one case of this area (3-minute budget)
def test_failed_async_save_exits_at_once_with_one_line(tmp_path):
  """Measured: orbax's pending save threads held the exit 300 s after the error; now ~1 s."""
  corpus = write_corpus(tmp_path / 'corpus.txt')
  workdir = tmp_path / 'w'
  out = run_python(
    BREAK_SAVES,
    *TINY_GPT,
    f'--config.data.files={corpus}',
    '--config.train.steps=12',
    '--config.eval_every=1000',
    '--config.checkpoint_every=2',
    f'--workdir={workdir}',
    timeout=120,
  )
  ended = time.time()
  assert 'BROKEN' in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]
  broken = float(out.stdout.split('BROKEN ')[1].split()[0])
  print(f'exited {ended - broken:.1f} s after the checkpoint directory went away')
  assert out.returncode == 2, out.stderr[-3000:]
  lines = error_lines(out.stderr, 'train.py')
  assert len(lines) == 1, out.stderr[-3000:]  # no traceback, not even orbax's logged ones
  assert lines[0].startswith('train.py: error: saving a checkpoint in '), lines
  assert str(workdir / 'checkpoints') in lines[0]
  assert ended - broken < 30


def test_renamed_config_keys_name_the_new_key_in_one_line():
  assert cli.renamed_key_error(['--config.pretrained=/w'], 'ppo.py') == (
    '--config.pretrained=/w: config.pretrained was renamed: use --config.init_checkpoint=/w.'
  )
  assert cli.renamed_key_error(['--config.task=dpo'], '/x/dpo.py').endswith(
    'use --config.objective=dpo.'
  )
  assert cli.renamed_key_error(['--config.task=qa'], 'finetune.py') is None  # task is finetune's
  c = defaults.preference()
  c.pretrained = '/w'  # an old notebook's config
  with pytest.raises(
    ValueError, match=r'^config.pretrained was renamed: set config.init_checkpoint'
  ):
    dpo.run(c, '/nonexistent')
