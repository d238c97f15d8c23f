"""What a user on preemptible or shared machines relies on: clean one-line errors that lose
nothing, SIGTERM saves, damaged-checkpoint fallback, NaN stops, and multi-process runs."""

import json
import os
import signal
import time

import numpy as np
import pytest

from conftest import run_processes, run_script
from test_train import TINY, load_params, read_metrics

pytestmark = pytest.mark.slow

BASE = [
  '--config=configs/base.py',
  *TINY,
  '--config.log_every=1',
  '--config.eval_every=1000',
  '--config.eval_batches=1',
]


def train(workdir, *args, check=True, **kw):
  return run_script('train.py', *BASE, f'--workdir={workdir}', *args, check=check, **kw)


def one_line_error(proc, *needles):
  assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
  errors = [l for l in proc.stderr.splitlines() if l.startswith(('train.py: error', 'Traceback'))]
  assert len(errors) == 1 and errors[0].startswith('train.py: error:'), proc.stderr[-3000:]
  for n in needles:
    assert n in errors[0], errors[0]
  return errors[0]


def ckpt_steps(workdir):
  d = os.path.join(workdir, 'checkpoints')
  return sorted(int(x) for x in os.listdir(d) if x.isdigit()) if os.path.isdir(d) else []


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A run with checkpoints at steps 2 and 4."""
  w = tmp_path_factory.mktemp('trained')
  train(w, '--config.train.steps=4', '--config.checkpoint_every=2', '--config.keep_checkpoints=5')
  assert ckpt_steps(w) == [2, 4]
  return w


@pytest.mark.parametrize(
  'args,needles',
  [
    (['--config.train.stepz=3'], ['unknown config key', 'stepz', 'did you mean "steps"']),
    (['--config.train.steps=abc'], ['--config.train.steps', 'abc']),
    (
      ['--config.data.source=files', '--config.data.files=/no/such/file.txt'],
      ['/no/such/file.txt', '--config.data.files'],
    ),
    (
      [
        '--config.data.source=tfds',
        '--config.data.tfds_name=no_such_tfds_dataset',
        '--config.data.data_dir=/tmp/none',
      ],
      ['no_such_tfds_dataset', 'tfds build'],
    ),
  ],
)
def test_bad_input_one_line_error(tmp_path, args, needles):
  one_line_error(train(tmp_path / 'w', *args, check=False), *needles)


def test_empty_corpus(tmp_path):
  empty = tmp_path / 'empty.txt'
  empty.write_text('\n   \n\n')
  proc = train(
    tmp_path / 'w', '--config.data.source=files', f'--config.data.files={empty}', check=False
  )
  one_line_error(proc, 'empty', '--config.data.files')


def test_bad_bytes_and_a_10mb_line_are_repaired_and_counted(tmp_path):
  text = tmp_path / 'corpus.txt'
  docs = [f'document {i} says hello to the world of text number {i}. ' * 20 for i in range(40)]
  with open(text, 'wb') as f:
    f.write('\n\n'.join(docs).encode() + b'\n\nbroken \xff\xfe bytes here\n\n')
    f.write(b'lorem ipsum dolor ' * 600_000 + b'\n')  # one 10.8 MB line
  proc = train(
    tmp_path / 'w',
    '--config.data.source=files',
    f'--config.data.files={text}',
    '--config.train.steps=2',
  )
  assert '2 invalid UTF-8 sequences replaced, 1 over-long lines split' in proc.stdout, proc.stdout


def test_read_only_workdir(tmp_path):
  one_line_error(
    train('/proc/lm_workdir', '--config.train.steps=2', check=False),
    '/proc/lm_workdir',
    'writable --workdir',
  )


def test_wrong_checkpoint_shapes_lose_nothing(trained, tmp_path):
  before = {p: os.path.getsize(os.path.join(dp, p)) for dp, _, fs in os.walk(trained) for p in fs}
  proc = train(trained, '--config.train.steps=6', '--config.model.mlp_dim=96', check=False)
  one_line_error(proc, 'does not match the model', 'shape mismatch')
  assert ckpt_steps(trained) == [2, 4]
  after = {p: os.path.getsize(os.path.join(dp, p)) for dp, _, fs in os.walk(trained) for p in fs}
  assert {k: v for k, v in after.items() if k in before} == before


def test_damaged_latest_checkpoint_falls_back(trained, tmp_path):
  work = tmp_path / 'copy'
  import shutil

  shutil.copytree(trained, work)
  state_dir = work / 'checkpoints' / '4' / 'state'
  for dp, _, fs in os.walk(state_dir):  # truncate every data file of step 4
    for f in fs:
      open(os.path.join(dp, f), 'wb').close()
  proc = train(work, '--config.train.steps=6')
  assert 'checkpoint step 4 is damaged' in proc.stdout and 'resumed from step 2' in proc.stdout
  # Steps 3 and 4 were recomputed from step 2 and must match the original run exactly.
  rows = [json.loads(l) for l in open(work / 'metrics.jsonl')]
  redone = {r['step']: r['train/loss'] for r in rows[4:] if 'train/loss' in r}
  original = read_metrics(trained)
  assert [redone[s] for s in (3, 4)] == [original[s]['train/loss'] for s in (3, 4)]
  assert ckpt_steps(work)[-1] == 6


def test_nan_loss_stops_without_a_nan_checkpoint(tmp_path):
  w = tmp_path / 'w'
  # Warmup from lr 0: step 1 is finite and saved; the next update overflows the params.
  proc = train(
    w,
    '--config.train.steps=50',
    '--config.train.lr=1e30',
    '--config.train.clip_norm=0',
    '--config.train.warmup_steps=20',
    '--config.checkpoint_every=1',
    check=False,
  )
  err = one_line_error(proc, 'at step', 'train.lr')
  assert 'nan' in err.lower() or 'inf' in err.lower()
  assert ckpt_steps(w) and f'last good checkpoint: step {ckpt_steps(w)[-1]}' in err
  for x in __import__('jax').tree.leaves(load_params(w)):
    assert np.all(np.isfinite(x))


def test_sigterm_saves_and_exits_cleanly(tmp_path):
  w = tmp_path / 'w'
  proc = run_script(
    'train.py',
    *BASE,
    f'--workdir={w}',
    '--config.train.steps=100000',
    '--config.checkpoint_every=100000',
    background=True,
    stdout=open(tmp_path / 'out.log', 'w'),
    stderr=open(tmp_path / 'err.log', 'w'),
  )
  metrics = w / 'metrics.jsonl'
  assert _term_when(proc, metrics, lambda r: r['step'] >= 5) == 0
  out = (tmp_path / 'out.log').read_text()
  assert 'SIGTERM: saved step' in out, out
  saved = int(out.split('SIGTERM: saved step ')[1].split(',')[0])
  assert ckpt_steps(w) == [saved]
  last = max(json.loads(l)['step'] for l in open(metrics))
  assert saved == last


def test_two_processes_match_one_process(tmp_path):
  """2 processes x 4 CPU devices (gloo collectives) vs 1 process x 8 devices, mesh (2, 2, 2).
  Each run prepares its data from scratch in its own cache: in the 2-process run, process 0
  prepares while process 1 waits for the manifest and never reads the corpus."""
  args = [
    *BASE,
    '--config.model.dropout_rate=0',
    '--config.model.attention_dropout_rate=0',
    '--config.train.steps=12',
    '--config.mesh_shape=(2,2,2)',
    '--config.checkpoint_every=6',
  ]
  run_script(
    'train.py',
    *args,
    f'--workdir={tmp_path / "one"}',
    devices=8,
    env={'LM_DATA_CACHE': str(tmp_path / 'cache_one')},
  )
  p0, p1 = run_processes(
    'train.py',
    *args,
    f'--workdir={tmp_path / "two"}',
    log_dir=tmp_path,
    env={'LM_DATA_CACHE': str(tmp_path / 'cache_two')},
  )
  assert '2 process(es)' in p0
  assert 'prepare:' in p0
  assert 'prepare:' not in p1
  one, two = read_metrics(tmp_path / 'one'), read_metrics(tmp_path / 'two')
  a = np.array([one[s]['train/loss'] for s in sorted(one)])
  b = np.array([two[s]['train/loss'] for s in sorted(two)])
  assert len(a) == len(b) == 12
  np.testing.assert_allclose(b, a, rtol=1e-5)
  assert ckpt_steps(tmp_path / 'two') == [6, 12]


def _term_when(proc, metrics_file, predicate, timeout=300):
  """Sends SIGTERM once a metrics.jsonl row satisfies `predicate`; returns the exit code."""
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if metrics_file.exists() and any(predicate(json.loads(l)) for l in open(metrics_file)):
      break
    time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  return proc.wait(timeout=120)


def test_sigterm_during_eval_stops_the_eval_and_saves(tmp_path):
  """An endless eval (100k batches) must not hold a preempted job past its grace period."""
  w = tmp_path / 'w'
  proc = run_script(
    'train.py',
    *BASE,
    f'--workdir={w}',
    '--config.train.steps=5',
    '--config.eval_every=1',
    '--config.eval_batches=100000',
    background=True,
    stdout=open(tmp_path / 'out.log', 'w'),
    stderr=open(tmp_path / 'err.log', 'w'),
  )
  assert _term_when(proc, w / 'metrics.jsonl', lambda r: r['step'] >= 1) == 0
  assert 'SIGTERM: saved step 1' in (tmp_path / 'out.log').read_text()
  assert ckpt_steps(w) == [1]


def test_dpo_sigterm_saves_and_exits_cleanly(pretrained_gpt, tmp_path):
  w = tmp_path / 'dpo'
  proc = run_script(
    'dpo.py',
    '--config=configs/dpo.py',
    f'--workdir={w}',
    f'--config.init_checkpoint={pretrained_gpt}',
    '--config.train.steps=100000',
    '--config.log_every=1',
    '--config.eval_every=100000',
    '--config.checkpoint_every=100000',
    background=True,
    stdout=open(tmp_path / 'out.log', 'w'),
    stderr=open(tmp_path / 'err.log', 'w'),
  )
  code = _term_when(proc, w / 'metrics.jsonl', lambda r: r['step'] >= 3 and 'train/loss' in r)
  out = (tmp_path / 'out.log').read_text()
  assert code == 0, (tmp_path / 'err.log').read_text()[-3000:]
  saved = int(out.split('SIGTERM: saved step ')[1].split(',')[0])
  assert saved >= 3 and ckpt_steps(w) == [saved]


def test_failed_checkpoint_write_fails_the_run(tmp_path):
  """A save that cannot be written raises (at save or at wait), never vanishes, and leaves no
  orbax thread holding the interpreter's exit (for its 300 s signal timeout, before
  checkpoint.release_stuck_saves)."""
  code = f"""
import os, shutil, sys
import jax.numpy as jnp
from lm import checkpoint
d = {str(tmp_path / 'ckpt')!r}
ckpt = checkpoint.Checkpointer(d, every=1)
ckpt.save(1, {{'w': jnp.ones(3)}}, {{'step': 1}})
ckpt.wait()
shutil.rmtree(d)
open(d, 'w').write('not a directory')  # the next write has nowhere to go
try:
  ckpt.save(2, {{'w': jnp.ones(3)}}, {{'step': 2}})
  ckpt.wait()
except Exception as e:
  print('RAISED', type(e).__name__, flush=True)
"""
  import subprocess
  import sys

  out = subprocess.run(
    [sys.executable, '-c', code],
    capture_output=True,
    text=True,
    timeout=60,
    env=dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1'),
  )
  assert 'RAISED CheckpointError' in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]


def test_save_interval_keeps_orbax_preemption_saves(tmp_path):
  """A custom save interval replaces orbax's default policy; ours must still include the
  preemption policy, so multi-host jobs save when the scheduler says they are preempted."""
  from lm import checkpoint
  from orbax.checkpoint import checkpoint_managers as cm

  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ckpt'), every=7)
  policy = ckpt._mngr._options.save_decision_policy  # pylint: disable=protected-access
  kinds = {type(p) for p in policy.policies}
  assert {cm.PreemptionCheckpointingPolicy, cm.FixedIntervalPolicy} <= kinds
  assert [s for s in range(1, 30) if ckpt.should_save(s)] == [7, 14, 21, 28]
  ckpt.close()
