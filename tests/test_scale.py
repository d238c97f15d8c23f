"""Every job scales out: 2 processes x 4 simulated CPU devices (jax.distributed on localhost)
give the metrics and loss curve of 1 process x 8 devices on the mesh (2, 2, 2), and each process
reads only its own rows of every batch (LM_ROW_LOG: the row ids each process read, per batch).
Pretraining runs on configs/gpt_mixture.py's two-source mixture (docs 0.7 / text 0.3): its rows
are logged with their source, and each source's evaluation (train.py's and eval.py's) is compared
(tests/test_mixture.py tests the mixture's reads without processes)."""

import json
import os

import numpy as np
import pytest

from conftest import TINY, run_processes, run_script
from test_train import read_metrics

pytestmark = pytest.mark.slow

# 4 steps of 8 rows on the mesh, evaluated every 2: the shared part of every training command
# (pretraining evaluates batches of train.batch_size rows; the others, eval_batch_size).
SHORT_RUN = [
  '--config.mesh_shape=(2,2,2)',
  '--config.train.steps=4',
  '--config.train.batch_size=8',
  '--config.train.warmup_steps=1',
  '--config.eval_every=2',
  '--config.checkpoint_every=4',
  '--config.log_every=1',
]
FINETUNE = [
  *SHORT_RUN,
  '--config.eval_batch_size=16',
  '--config.model_overrides.dropout_rate=0',
  '--config.model_overrides.attention_dropout_rate=0',
  '--config.data.max_len=64',
  '--config.data.eval_fraction=0.03',  # a few batches of validation examples
]
# job -> commands, each (script, args); {w} is the run's workdir, {gpt} the pretrained decoder,
# {text} the directory of the mixture's text files (_write_text).
JOBS = {
  'pretraining on a mixture+eval.py': [
    (
      'train.py',
      [
        '--config=configs/gpt_mixture.py',
        *TINY,
        *SHORT_RUN,
        # both sources local text (a component reads data.* where it sets nothing): Python's
        # docs would take 5 s to read, once, in the 1-process run
        '--config.data.mixture.docs.source=files',
        '--config.data.files={text}/docs.txt',
        '--config.data.mixture.text.files={text}/text.txt',
        '--config.data.eval_fraction=0.1',
        '--config.eval_batches=2',
        '--config.sample_tokens=2',
      ],
    ),
    ('eval.py', ['--checkpoint={w}', '--output={w}/eval.json', '--eval_batches=2']),
  ],
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
        '--config.eval_batch_size=16',
        '--config.data.max_pairs=48',
        '--config.data.eval_fraction=0.05',
        '--config.data.test_fraction=0.05',
        '--config.data.seq_len=64',
        '--config.data.max_prompt_len=32',
      ],
    )
  ],
}
MIXTURE = {'docs': 0.7, 'text': 0.3}  # configs/gpt_mixture.py's sources and weights


def _write_text(directory):
  """The mixture's sources: 80 one-paragraph documents each, of their own words."""
  os.makedirs(directory)
  for name, words in (
    ('docs', 'the assert statement raises an error when its condition is false'),
    ('text', 'river bridge lantern engine glacier compass harbor meadow'),
  ):
    words = words.split()
    paras = (' '.join(words[(i + j) % len(words)] + f' {i}' for j in range(24)) for i in range(80))
    (directory / f'{name}.txt').write_text('\n\n'.join(paras), encoding='utf-8')


def _run(job, gpt, root, processes):
  """Runs the job's commands on 1 process x 8 or 2 x 4 devices; returns the workdir."""
  w = root / 'work'
  os.makedirs(w)
  env = {'LM_ROW_LOG': str(root / 'rows')}
  for script, args in JOBS[job]:
    args = [a.format(w=w, gpt=gpt, text=root.parent / 'text') for a in args]
    if script == 'finetune.py':
      args.append(f'--config.init_checkpoint={gpt}')
    if script in ('finetune.py', 'dpo.py', 'train.py'):
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


def _tagged(line):
  """(row, its source) of a logged batch; a mixture logs each row's source, others none."""
  return sorted(zip(line['rows'], line.get('sources', [None] * len(line['rows']))))


def _check_rows(one, two):
  """Per batch: the two processes read disjoint rows that together are the 1-process rows, each
  from the same source."""
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
      assert sorted(_tagged(a) + _tagged(b)) == _tagged(w), (kind, w, a, b)
  return kinds


def _check_mixture(one, two, root):
  """The mixture's training rows name their sources, 0.7 / 0.3 to within a row each step; each
  source is prepared into its own shards with the first one's tokenizer (the run's); train.py
  evaluates each source and both pooled, and eval.py on the workdir gives the last figures."""
  from lm import pretrained  # noqa: PLC0415 (JAX starts after conftest set the device count)
  from lm.data import mixture  # noqa: PLC0415

  for p in (0, 1):
    assert all(
      len(r['sources']) == len(r['rows']) for r in _rows(root / 'two', 'pretrain_train', p)
    )
  lines = _rows(root / 'one', 'pretrain_train', 0)
  assert [r['step'] for r in lines] == list(range(4)), lines
  for line in lines:
    assert set(line['sources']) == set(MIXTURE), line
    share = line['sources'].count('text') / len(line['sources'])
    assert abs(share - MIXTURE['text']) < 1 / len(line['sources']), line
  sources, _ = mixture.ensure(pretrained.saved_config(one).data)  # prepared: only read
  assert [s.name for s in sources] == sorted(MIXTURE) and sources[0].directory != sources[
    1
  ].directory
  first = os.path.join(sources[0].directory, 'tokenizer.json')
  assert sources[1].manifest['tokenizer']['from'] == first
  assert open(first).read() == open(one / 'tokenizer.json').read()
  for w in (one, two):
    evals = read_metrics(w, 'eval')
    for m in evals.values():
      per_source = [m[f'eval/{n}/loss'] for n in MIXTURE]
      assert min(per_source) <= m['eval/loss'] <= max(per_source), m
      assert all(f'eval/{n}/perplexity' in m for n in MIXTURE), m
    last = evals[max(evals)]
    result = json.load(open(w / 'eval.json', encoding='utf-8'))
    for k in ('loss', *(f'{n}/loss' for n in MIXTURE)):
      assert result[k] == pytest.approx(last[f'eval/{k}'], rel=1e-5), (k, result, last)


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
  _write_text(tmp_path / 'text')
  one = _run(job, pretrained_gpt, tmp_path / 'one', 1)
  two = _run(job, pretrained_gpt, tmp_path / 'two', 2)
  kinds = _check_rows(tmp_path / 'one', tmp_path / 'two')
  if job.startswith('pretraining on a mixture'):
    _check_mixture(one, two, tmp_path)
  if os.path.exists(one / 'metrics.jsonl'):  # the loss curve and every evaluation
    assert {'finetune_train', 'preference_train', 'pretrain_train'} & set(kinds)
    for prefix in ('train', 'eval'):
      a, b = read_metrics(one, prefix), read_metrics(two, prefix)
      assert len(a) >= 2 and sorted(a) == sorted(b), (prefix, a, b)
      for step in a:
        _close(a[step], b[step], f'{prefix} step {step}')
  if os.path.exists(one / 'eval.json'):
    a, b = (json.load(open(w / 'eval.json', encoding='utf-8')) for w in (one, two))
    a.pop('checkpoint'), b.pop('checkpoint')
    _close(a, b, 'eval.py')
