"""lm.report's Weights & Biases run, read back from its offline run directory: a real train.py run
(and its resumption) in WANDB_MODE=offline holds the run's config, the scalars of metrics.jsonl at
the same steps, and the text sample. Nothing leaves the machine."""

import glob
import json
import os
import struct
import subprocess
import sys
import zlib

import pytest

import conftest
from conftest import ROOT, run_script

pytest.importorskip('wandb')
from wandb.proto import wandb_internal_pb2  # noqa: E402

TINY = [
  '--config=configs/gpt_base.py',
  *conftest.TINY,
  '--config.train.warmup_steps=2',
  '--config.log_every=2',
  '--config.eval_every=3',
  '--config.eval_batches=2',
  '--config.sample_tokens=4',
  '--config.report.wandb_project=lm-test',
]


def wandb_records(path: str):
  """The records of a `.wandb` transaction log, parsed by wandb's own protobuf `Record`.

  wandb 0.31 has no Python reader left (its service, in Go, writes and syncs these files), so this
  follows the LevelDB log framing the file uses: a 7-byte header (':W&B', magic 0xBEE1, version
  0), then 32 KiB blocks of chunks, each (CRC-32 of type + data, length, type FULL=1 / FIRST=2 /
  MIDDLE=3 / LAST=4) + data; a block's tail shorter than a chunk header is padding."""
  data = open(path, 'rb').read()
  assert data[:7] == struct.pack('<4sHB', b':W&B', 0xBEE1, 0), data[:7]
  pos, block, parts = 7, 32768, b''
  while pos + 7 <= len(data):
    if block - pos % block < 7:
      pos += block - pos % block
      continue
    crc, n, kind = struct.unpack('<IHB', data[pos : pos + 7])
    if (crc, n, kind) == (0, 0, 0):  # zero padding to the block's end
      pos += block - pos % block
      continue
    chunk = data[pos + 7 : pos + 7 + n]
    assert zlib.crc32(bytes([kind]) + chunk) == crc, f'bad checksum at byte {pos}'
    pos, parts = pos + 7 + n, parts + chunk
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(parts)
      parts = b''
      yield record


def read_offline_run(run_dir: str) -> dict:
  """{'id', 'name', 'project', 'config', 'scalars': {(key, step): value}, 'media': {(key, step):
  the logged file's JSON}} of one offline run directory."""
  (log,) = glob.glob(os.path.join(run_dir, 'run-*.wandb'))
  out = {'scalars': {}, 'media': {}}
  for r in wandb_records(log):
    kind = r.WhichOneof('record_type')
    if kind == 'run':
      out.update(id=r.run.run_id, name=r.run.display_name, project=r.run.project)
      out['config'] = {
        u.key: json.loads(u.value_json) for u in r.run.config.update if u.key != '_wandb'
      }
    elif kind == 'history':
      step = r.history.step.num
      items = {tuple(i.nested_key) or (i.key,): json.loads(i.value_json) for i in r.history.item}
      for key, value in items.items():
        if len(key) == 1 and not key[0].startswith('_'):
          out['scalars'][key[0], step] = value
        elif key[1:] == ('path',):
          media = json.load(open(os.path.join(run_dir, 'files', value), encoding='utf-8'))
          out['media'][key[0], step] = media
  return out


def saved_config(workdir, step: int) -> dict:
  """The config the job saved beside its checkpoint of `step` (lm.checkpoint.job_meta)."""
  (meta,) = glob.glob(os.path.join(workdir, 'checkpoints', str(step), 'meta', 'metadata'))
  return json.loads(json.load(open(meta, encoding='utf-8'))['config'])


def offline_env(tmp_path, workdir) -> dict:
  """wandb offline and quiet, its settings, cache and artifacts under tmp_path (not ~)."""
  home = tmp_path / 'wandb_home'
  return {
    'WANDB_MODE': 'offline',
    'WANDB_SILENT': 'true',
    'WANDB_API_KEY': '',
    'WANDB_DIR': str(workdir),
    'WANDB_CONFIG_DIR': str(home / 'config'),
    'WANDB_CACHE_DIR': str(home / 'cache'),
    'WANDB_DATA_DIR': str(home / 'data'),
    'WANDB_ARTIFACT_DIR': str(home / 'artifacts'),
  }


def metrics_jsonl(workdir) -> dict:
  """{(key, step): value} of WORKDIR/metrics.jsonl: the reference."""
  rows = [json.loads(line) for line in open(workdir / 'metrics.jsonl', encoding='utf-8')]
  return {(k, r['step']): v for r in rows for k, v in r.items() if k not in ('step', 'time')}


def assert_same_scalars(got: dict, want: dict):
  assert got.keys() == want.keys()
  for key, value in want.items():
    assert got[key] == pytest.approx(value, rel=1e-12, abs=0), key


def test_writer_sends_metrics_jsonl_to_an_offline_wandb_run(tmp_path):
  """report.Writer alone (no job): config, scalars at their steps (train and eval at one step
  merge into one W&B row) and the text sample as a one-row table."""
  workdir = tmp_path / 'run'
  code = (
    'import ml_collections; from lm import defaults, report; '
    "c = ml_collections.ConfigDict(dict(train=dict(steps=2, lr=1e-3), note='x')); "
    "c.report = defaults.report_block(); c.report.update(wandb_project='p', wandb_run_name='n'); "
    f'w = report.Writer({str(workdir)!r}, 2, c); '
    "w.write(1, {'loss': 1.5, 'accuracy': 0.25}); w.write(2, {'loss': 0.75}); "
    "w.write(2, {'loss': 1 / 3}, 'eval'); w.text(2, 'sample', 'the assert statement'); w.close()"
  )
  env = dict(os.environ, **offline_env(tmp_path, workdir))
  subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT, env=env, timeout=300)
  (run_dir,) = glob.glob(str(workdir / 'wandb' / 'offline-run-*'))
  run = read_offline_run(run_dir)
  assert (run['name'], run['project']) == ('n', 'p')
  assert run['id'] == (workdir / 'wandb_run_id').read_text().strip()
  report = {'wandb_project': 'p', 'wandb_entity': '', 'wandb_run_name': 'n'}
  assert run['config'] == {'train': {'steps': 2, 'lr': 1e-3}, 'note': 'x', 'report': report}
  want = metrics_jsonl(workdir)
  assert want == {
    ('train/loss', 1): 1.5,
    ('train/accuracy', 1): 0.25,
    ('train/loss', 2): 0.75,
    ('eval/loss', 2): 1 / 3,
  }
  assert_same_scalars(run['scalars'], want)
  table = run['media']['sample', 2]
  assert table['columns'] == ['step', 'text'] and table['data'] == [[2, 'the assert statement']]


def test_missing_wandb_fails_in_one_line_before_any_work(tmp_path):
  """train.py with report.wandb_project set and no wandb importable: one line naming the extra,
  before data preparation or a model (an import of wandb that fails stands in for its absence)."""
  fake = tmp_path / 'site' / 'wandb'
  fake.mkdir(parents=True)
  (fake / '__init__.py').write_text("raise ImportError('no wandb here')\n")
  proc = run_script(
    'train.py',
    '--config=configs/gpt_base.py',
    f'--workdir={tmp_path / "run"}',
    '--config.report.wandb_project=p',
    env={'PYTHONPATH': str(tmp_path / 'site')},
    check=False,
    timeout=300,
  )
  assert proc.returncode == 2, proc.stderr
  want = 'train.py: error: report.wandb_project is set but wandb is not installed: pip install'
  assert proc.stderr.startswith(want) and "'.[wandb]'" in proc.stderr, proc.stderr
  assert proc.stderr.count('\n') == 1, proc.stderr
  assert not (tmp_path / 'run' / 'metrics.jsonl').exists()


@pytest.mark.slow
def test_offline_wandb_run_of_train_py_and_its_resumption_equal_metrics_jsonl(tmp_path):
  """A real tiny train.py run, then the same workdir resumed to more steps: one W&B run (two
  offline directories with one id) whose config is each run's saved config and whose scalars
  are metrics.jsonl's; each run's end-of-run sample is its table."""
  workdir = tmp_path / 'tiny_gpt'
  env = offline_env(tmp_path, workdir)
  outs = []
  for steps in (6, 8):  # a finished run, then the same workdir resumed to more steps
    outs.append(
      run_script(
        'train.py',
        *TINY,
        f'--workdir={workdir}',
        f'--config.train.steps={steps}',
        env=env,
        timeout=300,
      ).stdout
    )
  assert 'resumed from step 6' in outs[1], outs[1]

  runs = sorted(glob.glob(str(workdir / 'wandb' / 'offline-run-*')))
  assert len(runs) == 2, runs
  first, resumed = map(read_offline_run, runs)
  run_id = (workdir / 'wandb_run_id').read_text().strip()
  for run in (first, resumed):  # one W&B run, named after the workdir
    assert (run['id'], run['name'], run['project']) == (run_id, 'tiny_gpt', 'lm-test')
  for run, steps in ((first, 6), (resumed, 8)):
    assert run['config'] == saved_config(workdir, steps)
    assert run['config']['train']['steps'] == steps
    assert run['config']['report']['wandb_project'] == 'lm-test'

  want = metrics_jsonl(workdir)
  assert {s for _, s in want} == {2, 3, 4, 6, 8}  # train every 2 steps, eval every 3 and at the end
  assert {'train/loss', 'train/learning_rate', 'eval/loss'} <= {k for k, _ in want}
  assert set(first['scalars']) & set(resumed['scalars']) == set()
  assert_same_scalars({**first['scalars'], **resumed['scalars']}, want)

  for run, steps, out in ((first, 6, outs[0]), (resumed, 8, outs[1])):
    table = run['media']['sample', steps]
    assert table['columns'] == ['step', 'text'] and len(table['data']) == 1
    step, text = table['data'][0]
    assert step == steps and text.strip() and f'[sample {steps}] {text}' in out
