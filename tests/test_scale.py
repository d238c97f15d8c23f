"""Every job scales out: 2 processes x 4 simulated CPU devices (jax.distributed on localhost)
give the metrics and loss curve of 1 process x 8 devices on the mesh (2, 2, 2), and each process
reads only its own rows of every batch (LM_ROW_LOG: the row ids each process read, per batch)."""

import json
import os

import numpy as np
import pytest

from conftest import run_processes, run_script
from test_train import read_metrics

pytestmark = pytest.mark.slow

# 4 steps of 8 rows on the mesh, evaluated every 2: the shared part of every training command.
SHORT_RUN = [
  '--config.mesh_shape=(2,2,2)',
  '--config.train.steps=4',
  '--config.train.batch_size=8',
  '--config.train.warmup_steps=1',
  '--config.eval_batch_size=16',
  '--config.eval_every=2',
  '--config.checkpoint_every=4',
  '--config.log_every=1',
]
FINETUNE = [
  *SHORT_RUN,
  '--config.model_overrides.dropout_rate=0',
  '--config.model_overrides.attention_dropout_rate=0',
  '--config.data.max_len=64',
  '--config.data.eval_fraction=0.03',  # a few batches of validation examples
]
# job -> commands, each (script, args); {w} is the run's workdir, {gpt} the pretrained decoder.
JOBS = {
  'classification+eval.py': [
    ('finetune.py', ['--config=configs/finetune_cls.py', *FINETUNE]),
    ('eval.py', ['--checkpoint={w}', '--output={w}/eval.json', '--max_examples=40']),
  ],
  'qa': [
    (
      'finetune.py',
      [
        '--config=configs/finetune_qa.py',
        *FINETUNE,
        '--config.data.max_len=96',
        '--config.data.max_query_len=16',
        '--config.data.doc_stride=64',
        '--config.data.max_answer_len=16',
      ],
    )
  ],
  'dpo': [
    (
      'dpo.py',
      [
        '--config=configs/dpo.py',
        '--config.init_checkpoint={gpt}',
        *SHORT_RUN,
        '--config.data.max_pairs=48',
        '--config.data.eval_fraction=0.05',
        '--config.data.test_fraction=0.05',
        '--config.data.seq_len=64',
        '--config.data.max_prompt_len=32',
      ],
    )
  ],
  'pretraining eval.py': [
    ('eval.py', ['--checkpoint={gpt}', '--output={w}/eval.json', '--eval_batches=2'])
  ],
}


def _run(job, gpt, root, processes):
  """Runs the job's commands on 1 process x 8 or 2 x 4 devices; returns the workdir."""
  w = root / 'work'
  os.makedirs(w)
  env = {'LM_ROW_LOG': str(root / 'rows')}
  for script, args in JOBS[job]:
    args = [a.format(w=w, gpt=gpt) for a in args]
    if script == 'finetune.py':
      args.append(f'--config.init_checkpoint={gpt}')
    if script in ('finetune.py', 'dpo.py'):
      args.append(f'--workdir={w}')
    if processes == 1:
      run_script(script, *args, devices=8, env=env)
    else:
      logs = root / script
      os.makedirs(logs)
      run_processes(script, *args, log_dir=logs, env=env)
  return w


def _rows(root, kind, process):
  path = root / 'rows' / f'{kind}.{process}.jsonl'
  return [json.loads(l) for l in open(path, encoding='utf-8')]


def _check_rows(one, two):
  """Per batch: the two processes read disjoint rows that together are the 1-process rows."""
  kinds = sorted({f.split('.')[0] for f in os.listdir(one / 'rows')})
  assert kinds and kinds == sorted({f.split('.')[0] for f in os.listdir(two / 'rows')})
  for kind in kinds:
    whole, p0, p1 = _rows(one, kind, 0), _rows(two, kind, 0), _rows(two, kind, 1)
    assert len(whole) == len(p0) == len(p1) > 0, kind
    assert all(r['rows'] for r in p0) and any(r['rows'] for r in p1), kind
    for w, a, b in zip(whole, p0, p1):
      assert w['step'] == a['step'] == b['step'], kind
      assert not set(a['rows']) & set(b['rows']), (kind, a, b)  # a last batch's padding: []
      assert sorted(a['rows'] + b['rows']) == sorted(w['rows']), (kind, w, a, b)
  return kinds


TIMING = ('per_sec', 'time', 'seconds', 'elapsed')  # wall-clock figures differ between runs


def _close(a, b, where):
  assert sorted(a) == sorted(b), where
  for k in a:
    if any(t in k for t in TIMING):
      continue
    if isinstance(a[k], (int, float)) and not isinstance(a[k], bool):
      np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=f'{where} {k}')


@pytest.mark.parametrize('job', JOBS)
def test_two_processes_match_one_process(job, pretrained_gpt, tmp_path):
  one = _run(job, pretrained_gpt, tmp_path / 'one', 1)
  two = _run(job, pretrained_gpt, tmp_path / 'two', 2)
  kinds = _check_rows(tmp_path / 'one', tmp_path / 'two')
  if os.path.exists(one / 'metrics.jsonl'):  # the loss curve and every evaluation
    assert 'finetune_train' in kinds or 'preference_train' in kinds
    for prefix in ('train', 'eval'):
      a, b = read_metrics(one, prefix), read_metrics(two, prefix)
      assert len(a) >= 2 and sorted(a) == sorted(b), (prefix, a, b)
      for step in a:
        _close(a[step], b[step], f'{prefix} step {step}')
  if os.path.exists(one / 'eval.json'):
    a, b = (json.load(open(w / 'eval.json', encoding='utf-8')) for w in (one, two))
    a.pop('checkpoint'), b.pop('checkpoint')
    _close(a, b, 'eval.py')
