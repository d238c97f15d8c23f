"""Suite-wide set-up: 8 simulated CPU devices (before JAX starts), a private prepared-data
cache, and a train.py runner.

Runs serially or under pytest-xdist (`-n 2 --dist loadfile`, the README's command): the workers
of one run share the prepared-data cache and the pretraining fixtures, each built once."""

import fcntl
import os
import subprocess
import sys
import tempfile

os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Prepared corpora go to this session's own cache (shared by its runs and xdist workers, never by
# the user's). Preparation locks its directory, so workers can race for it.
_RUN = os.environ.get('PYTEST_XDIST_TESTRUNUID')
if _RUN:
  os.environ['LM_DATA_CACHE'] = os.path.join(tempfile.gettempdir(), f'lm_data_cache_{_RUN}')
  os.makedirs(os.environ['LM_DATA_CACHE'], exist_ok=True)
else:
  os.environ['LM_DATA_CACHE'] = tempfile.mkdtemp(prefix='lm_data_cache_')
# Compiled programs go to this session's own JAX persistent cache too, shared by the workers and
# by every script the tests start: a resumed, killed or repeated run loads its step instead of
# compiling it again (a tiny train.py run: 9.5 s -> 5.5 s). Same programs, same numerics.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.environ['LM_DATA_CACHE'] + '_jax')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The longest files first (measured under `-n 2 --dist loadfile`, in seconds of their tests),
# the rest after in pytest's order: each xdist worker takes whole files in this order
# (pytest.ini turns off xdist's own by-test-count order), so neither idles at the end while
# the other finishes a long file. test_train.py builds the shared pretraining fixtures while
# the other worker runs the notebooks, which need none.
LONGEST_FIRST = (
  'test_train.py',  # ~600 + the BERT and GPT fixtures (~450)
  'test_colabs.py',  # ~500
  'test_llama.py',  # ~230, its own Llama run
  'test_sft.py',  # ~300
  'test_scale.py',  # ~300
  'test_reliability.py',  # ~280
  'test_ppo.py',  # ~230
  'test_rlhf.py',  # ~170
  'test_bench.py',  # ~150
  'test_workdirs.py',  # ~125: ten tiny runs of every job (last alphabetically: it ran alone at the end)
  'test_context_parallel.py',  # ~90: train.py on a context mesh vs 1 device, kill -9 + resume
  'test_harness.py',  # ~85: lm-eval's own hf backend beside ours on GPT-2, Llama, T5; 2 processes
  'test_engine.py',  # ~58 (serial, 2 cores, light load)
  'test_serve.py',  # ~43: one served process for its server tests
  'test_report.py',  # ~35: two tiny train.py runs logging to an offline W&B run
  'test_progress.py',  # ~35: prepare, train.py and eval.py under a pseudo-terminal
  'test_icl.py',
  'test_finetune.py',
  'test_prepare.py',
  'test_t5.py',
  'test_span.py',
)


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable within a file


def run_script(
  script, *args, devices=None, timeout=900, check=True, env=None, background=False, **popen_kwargs
):
  """Runs a repo-root script (train.py, eval.py, ...) in a fresh process.

  devices: simulated CPU device count for that process (default 1, unlike this one).
  background: return the Popen at once (popen_kwargs go to it) instead of waiting.
  """
  e = dict(os.environ, **(env or {}))
  e['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices or 1}'
  cmd = [sys.executable, os.path.join(ROOT, script), *map(str, args)]
  if background:
    return subprocess.Popen(cmd, cwd=ROOT, env=e, **popen_kwargs)
  proc = subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(
      f'{" ".join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}'
    )
  return proc


def free_port() -> int:
  import socket  # noqa: PLC0415

  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def run_processes(script, *args, log_dir, processes=2, devices=4, env=None, timeout=600):
  """Runs `script` as `processes` jax.distributed processes on localhost (`devices` simulated
  CPU devices each, gloo collectives), waits for all, and returns their stdout logs
  (log_dir/p{i}.log; stderr in e{i}.log)."""
  port = free_port()
  procs = [
    run_script(
      script,
      *args,
      devices=devices,
      background=True,
      stdout=open(os.path.join(log_dir, f'p{i}.log'), 'w'),
      stderr=open(os.path.join(log_dir, f'e{i}.log'), 'w'),
      env={
        'LM_COORDINATOR': f'localhost:{port}',
        'LM_NUM_PROCESSES': str(processes),
        'LM_PROCESS_ID': str(i),
        'LM_INIT_TIMEOUT': '120',
        **(env or {}),
      },
    )
    for i in range(processes)
  ]
  for i, p in enumerate(procs):
    if p.wait(timeout=timeout) != 0:
      for q in procs:
        q.kill()
      err = open(os.path.join(log_dir, f'e{i}.log'), encoding='utf-8').read()
      raise AssertionError(f'{script} process {i} exited {p.returncode}:\n{err[-4000:]}')
  return [
    open(os.path.join(log_dir, f'p{i}.log'), encoding='utf-8').read() for i in range(processes)
  ]


# A model small enough for thousands of CPU steps in seconds: the end-to-end tests' overrides.
TINY = [
  '--config.model.hidden_size=32',
  '--config.model.num_layers=1',
  '--config.model.num_heads=2',
  '--config.model.mlp_dim=64',
  '--config.model.max_len=32',
  '--config.data.seq_len=32',
  '--config.train.batch_size=8',
  '--config.data.tokenizer.vocab_size=512',
]


@pytest.fixture
def run():
  return run_script


# Shared pretraining runs. test_train.py checks their loss curves; fine-tuning, DPO,
# reward-model and few-shot tests start from them.


def _pretrain(tmp_path_factory, name, config, steps, *overrides):
  """Runs train.py once per test session: under xdist the first worker to get here trains while
  holding a lock, and the others wait and reuse its workdir."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent  # the base directory all workers of this run share
  workdir, done = root / f'shared_{name}', root / f'shared_{name}.done'
  with open(root / f'shared_{name}.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if done.exists():
      return workdir
    proc = run_script(
      'train.py',
      f'--config={config}',
      f'--workdir={workdir}',
      f'--config.train.steps={steps}',
      f'--config.train.warmup_steps={steps // 10}',
      '--config.log_every=10',
      f'--config.eval_every={steps}',
      f'--config.checkpoint_every={steps}',
      *overrides,
    )
    (workdir / 'stdout.log').write_text(proc.stdout)
    done.touch()
  return workdir


@pytest.fixture(scope='session')
def pretrained_bert(tmp_path_factory):
  """configs/base.py (BERT MLM + NSP on Python's docs), shortened from 600 steps of 32 rows to
  300 of 16: the fine-tuning tests need a trained body, not the best one."""
  return _pretrain(tmp_path_factory, 'bert', 'configs/base.py', 300, '--config.train.batch_size=16')


@pytest.fixture(scope='session')
def pretrained_gpt(tmp_path_factory):
  """configs/gpt_base.py (GPT causal LM on Python's docs), batch 16, 300 steps."""
  return _pretrain(
    tmp_path_factory, 'gpt', 'configs/gpt_base.py', 300, '--config.train.batch_size=16'
  )


def run_killed_and_resumed(script, args, workdir, kill_range, log, devices=None):
  """Runs `script` on `workdir` (on `devices` simulated devices) in the background, kill -9s it
  once metrics.jsonl logs a step drawn from `kill_range` (lo, hi), then runs it again to the
  end; returns (kill step, the resumed run's stdout)."""
  import json
  import random
  import signal
  import time

  kill_at = random.Random().randrange(*kill_range)
  proc = run_script(
    script,
    *args,
    f'--workdir={workdir}',
    devices=devices,
    background=True,
    stdout=open(log, 'w'),
    stderr=open(os.devnull, 'w'),
  )
  metrics = workdir / 'metrics.jsonl'
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and any(json.loads(l)['step'] >= kill_at for l in open(metrics)):
      break
    time.sleep(0.02)
  assert proc.poll() is None, 'the run ended before it could be killed'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  out = run_script(script, *args, f'--workdir={workdir}', devices=devices).stdout
  assert 'resumed from step' in out, out
  return kill_at, out


def tiny_gpt2_dir(tok, directory, param_dtype='float32'):
  """A random tiny GPT-2 in HF layout with `tok` (the plumbing is under test, not the model),
  its safetensors in `param_dtype`."""
  import flax.linen as nn
  import jax
  import numpy as np

  from lm import hf
  from lm import models as M

  cfg = M.ModelConfig(
    vocab_size=tok.vocab_size,
    hidden_size=16,
    num_layers=1,
    num_heads=2,
    mlp_dim=32,
    max_len=64,
    type_vocab_size=0,
    pre_ln=True,
    activation='gelu_tanh',
    param_dtype=param_dtype,
  )
  shapes = jax.eval_shape(
    hf.module('gpt2', cfg).init, jax.random.PRNGKey(0), jax.numpy.zeros((1, 8), np.int32)
  )
  rng = np.random.default_rng(0)
  params = jax.tree.map(
    lambda s: rng.normal(0, 0.02, s.shape).astype(s.dtype), nn.unbox(shapes)['params']
  )
  hf.export_pretrained('gpt2', cfg, params, directory)
  tok.save(str(directory))


def check_fewshot_accuracy(result):
  """Recounts a few-shot result's accuracy table from its per-example decisions.

  Each prediction must be the label with the highest recorded score, each cell's runs the
  fraction of test examples whose prediction is the gold label (run by run), its mean/std
  their mean/std, and the majority baseline the gold labels' largest share: the table is
  checked against the raw decisions, not against itself."""
  import numpy as np  # noqa: PLC0415

  examples, labels = result['examples'], result['labels']
  for s, cells in result['accuracy'].items():
    for k, cell in cells.items():
      per_ex = [
        sorted(ex['selections']['zero-shot' if k == '0' else s][k], key=lambda r: r['run'])
        for ex in examples
      ]
      for ex, runs in zip(examples, per_ex):
        for r in runs:
          assert r['prediction'] == labels[int(np.argmax(r['scores']))], (s, k, r)
      want = [
        float(np.mean([runs[j]['prediction'] == ex['label'] for runs, ex in zip(per_ex, examples)]))
        for j in range(len(per_ex[0]))
      ]
      assert cell['runs'] == pytest.approx(want, abs=1e-9), (s, k, cell['runs'], want)
      assert cell['mean'] == pytest.approx(np.mean(want), abs=1e-9), (s, k)
      assert cell['std'] == pytest.approx(np.std(want), abs=1e-9), (s, k)
  gold = [ex['label'] for ex in examples]
  assert result['majority_baseline'] == pytest.approx(max(map(gold.count, set(gold))) / len(gold))
