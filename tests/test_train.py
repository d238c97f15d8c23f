"""train.py end to end: the loss falls, resume is exact, a sharded run matches one device."""

import dataclasses
import json
import math
import os
import random

import numpy as np
import pytest

import conftest
from conftest import run_killed_and_resumed, run_script

# The tiny model, with dropout so the RNG must resume too.
TINY = [
  *conftest.TINY,
  '--config.model.dropout_rate=0.1',
  '--config.model.attention_dropout_rate=0.1',
]
# configs/t5.py (span corruption) at the same size; decoder and encoder one layer each.
TINY_T5 = [*TINY, '--config.model.d_kv=16', '--config.model.relative_buckets=8']
CONFIGS = {
  'bert': ['--config=configs/base.py', *TINY],
  't5': ['--config=configs/t5.py', *TINY_T5],
}


def read_metrics(workdir, prefix='train'):
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8')]
  return {r['step']: r for r in rows if f'{prefix}/loss' in r}


def load_params(workdir):
  from lm import pretrained  # imported late: JAX starts after conftest set the device count
  import jax

  return jax.tree.map(np.asarray, pretrained.load(workdir).params)


@pytest.mark.slow
@pytest.mark.parametrize(
  'fixture,key,margin',
  [
    ('pretrained_bert', 'mlm_loss', 2.5),
    ('pretrained_gpt', 'lm_loss', 3.0),
  ],
)
def test_default_configs_loss_falls(request, fixture, key, margin):
  """At init the loss is ln(vocab); the default configs' runs on Python's docs (300 steps each:
  the shared pretraining fixtures) must take `margin` nats off it. Measured on the corpus that
  leaves the downstream sources out (lm/data/python_docs.py): BERT MLM 8.84 at step 10 -> 6.23
  held out at 300 (batch 16; 5.89 after base.py's full 600 steps of 32), GPT LM 8.74 -> 5.77."""
  workdir = request.getfixturevalue(fixture)
  train, evals = read_metrics(workdir), read_metrics(workdir, 'eval')
  steps = max(evals)
  ln_vocab = math.log(8192)
  first, final = train[10][f'train/{key}'], evals[steps][f'eval/{key}']
  print(
    f'{fixture}: {key} at step 10 = {first:.3f}, eval at {steps} = {final:.3f}, ln V = {ln_vocab:.3f}'
  )
  assert abs(first - ln_vocab) < 1.0  # started near chance
  assert final < ln_vocab - margin
  assert '[sample' in (workdir / 'stdout.log').read_text()


@pytest.mark.slow
@pytest.mark.parametrize('name,steps', [('bert', 400), ('t5', 300)])
def test_resume_after_sigkill_is_bitwise_exact(tmp_path, name, steps):
  """Conditions: same machine, same binary, CPU; kill -9 at a random step; async saves every
  100 steps. Data batches and dropout keys are functions of the step, so a resumed run must
  reproduce the uninterrupted one bit for bit (BERT MLM + NSP, and T5 span corruption)."""
  args = [
    *CONFIGS[name],
    f'--config.train.steps={steps}',
    '--config.train.warmup_steps=100',
    '--config.checkpoint_every=100',
    '--config.log_every=10',
    f'--config.eval_every={steps}',
  ]
  straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
  run_script('train.py', *args, f'--workdir={straight}')

  kill_at, out = run_killed_and_resumed(
    'train.py', args, resumed, (150, steps - 100), tmp_path / 'killed.log'
  )
  print(f'killed at step >= {kill_at}; {out.splitlines()[1]}')

  a, b = load_params(straight), load_params(resumed)
  import jax

  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.array_equal(x, y)
  ma, mb = read_metrics(straight), read_metrics(resumed)
  assert ma[steps]['train/loss'] == mb[steps]['train/loss']


@pytest.mark.slow
@pytest.mark.parametrize('name', ['t5'])
def test_sharded_mesh_matches_one_device(tmp_path, name):
  """(data, fsdp, tensor) = (2, 2, 2) on 8 devices vs 1 device: same loss curve (T5 span
  corruption; BERT's (2, 2, 2) runs are test_sharding's forward and gradients and
  test_reliability's 2-process run, GPT's test_scale's and test_context_parallel's)."""
  args = [
    *CONFIGS[name],
    '--config.model.dropout_rate=0.0',
    '--config.model.attention_dropout_rate=0.0',
    '--config.train.steps=40',
    '--config.train.warmup_steps=5',
    '--config.log_every=5',
    '--config.eval_every=40',
  ]
  run_script('train.py', *args, f'--workdir={tmp_path / "one"}', '--config.mesh_shape=(1,1,1)')
  out = run_script(
    'train.py', *args, f'--workdir={tmp_path / "mesh"}', '--config.mesh_shape=(2,2,2)', devices=8
  ).stdout
  assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 2, 'context': 1}" in out
  one, mesh = read_metrics(tmp_path / 'one'), read_metrics(tmp_path / 'mesh')
  assert sorted(one) == sorted(mesh) == list(range(5, 45, 5))
  a = np.array([one[s]['train/loss'] for s in sorted(one)])
  b = np.array([mesh[s]['train/loss'] for s in sorted(mesh)])
  print('max relative loss difference', np.max(np.abs(a - b) / a))
  np.testing.assert_allclose(b, a, rtol=2e-4)
  assert a[-1] < a[0] - 0.2  # and it learned something


@pytest.mark.slow
def test_two_runs_from_scratch_are_bit_identical(tmp_path):
  """Same config and seed, nothing shared (each run prepares its own data and trains its own
  WordPiece tokenizer, on the first 400 documents to keep it short): byte-identical
  tokenizer.json and bit-identical parameters."""
  args = [
    '--config=configs/base.py',
    *TINY,
    '--config.data.max_documents=400',
    '--config.train.steps=30',
    '--config.train.warmup_steps=5',
    '--config.log_every=10',
    '--config.eval_every=30',
  ]
  for name in ('a', 'b'):
    out = run_script(
      'train.py',
      *args,
      f'--workdir={tmp_path / name}',
      env={'LM_DATA_CACHE': str(tmp_path / f'cache_{name}')},
    ).stdout
    assert 'prepare: trained a wordpiece tokenizer' in out
  tokenizers = [(tmp_path / n / 'tokenizer.json').read_bytes() for n in ('a', 'b')]
  assert tokenizers[0] == tokenizers[1]
  import jax

  a, b = load_params(tmp_path / 'a'), load_params(tmp_path / 'b')
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.array_equal(x, y)


@pytest.mark.slow
def test_new_workdir_reuses_prepared_data(tmp_path, pretrained_gpt):
  """A second run with the same data config (new workdir) never tokenizes: it opens the shards
  prepared by the shared fixture's run (or whichever run of this session came first)."""
  del pretrained_gpt
  out = run_script(
    'train.py',
    '--config=configs/gpt_base.py',
    f'--workdir={tmp_path / "w"}',
    '--config.train.steps=2',
    '--config.log_every=1',
    '--config.eval_every=2',
  ).stdout
  assert 'prepare:' not in out and '[train 2/2]' in out


def _new_text(directory, n_files=2):
  """New data for continued pretraining: prose the pretraining corpus never had."""
  rng = random.Random(0)
  words = 'river bridge lantern harbour orchard meadow violin engine glacier compass'.split()
  os.makedirs(directory, exist_ok=True)
  for i in range(n_files):
    paras = (' '.join(rng.choice(words) for _ in range(50)) + '.' for _ in range(30))
    with open(os.path.join(directory, f'{i}.txt'), 'w', encoding='utf-8') as f:
      f.write('\n\n'.join(paras))
  return os.path.join(directory, '*.txt')


@pytest.mark.slow
def test_continued_pretraining_starts_from_the_checkpoint(pretrained_gpt, tmp_path):
  """init_checkpoint: the first step's params are the checkpoint's (lr 0 keeps them exact), its
  loss is the loaded model's own loss on that batch of the new data (computed here with numpy),
  the optimizer restarts (Adam's count is 1 after one step, not 301), the new data is tokenized
  with the checkpoint's tokenizer, and a second run in the workdir resumes it instead."""
  import jax
  import ml_collections
  from lm import checkpoint
  from lm import optim
  from lm import pretrained
  from lm import sharding
  from lm import trainer
  from lm.data import prepare
  from lm import objectives
  from lm.data import shards

  files, workdir = _new_text(tmp_path / 'new'), tmp_path / 'cont'
  args = [
    'train.py',
    '--config=configs/gpt_base.py',
    f'--workdir={workdir}',
    f'--config.init_checkpoint={pretrained_gpt}',
    '--config.data.source=files',
    f'--config.data.files={files}',
    '--config.train.batch_size=4',
    '--config.train.lr=0',
    '--config.log_every=1',
    '--config.eval_every=0',
    '--config.sample_tokens=2',
  ]
  out = run_script(*args, '--config.train.steps=1').stdout
  assert f'continued pretraining from {pretrained_gpt} (step 300)' in out
  assert (workdir / 'tokenizer.json').read_text() == (pretrained_gpt / 'tokenizer.json').read_text()

  base = pretrained.load(str(pretrained_gpt))
  meta, _ = checkpoint.Checkpointer(str(workdir / 'checkpoints'), read_only=True).read_meta(1)
  assert (meta['job'], meta['record']['kind']) == ('pretrain', 'decoder')
  assert meta['record']['model'] == dataclasses.asdict(base.cfg)
  config = ml_collections.ConfigDict(json.loads(meta['config']))
  mesh = sharding.make_mesh((-1, 1, 1))
  inputs = (np.zeros((1, config.data.seq_len), np.int32),)
  target = trainer.abstract_state(base.model, optim.make(config.train), mesh, inputs)
  ckpt = checkpoint.Checkpointer(str(workdir / 'checkpoints'), read_only=True)
  state, _, _ = ckpt.restore(target, 1)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(base.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  counts = [
    int(x)
    for p, x in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
    if 'count' in jax.tree_util.keystr(p)
  ]
  assert int(state.step) == 1 and counts and set(counts) == {1}

  # The logged step-1 loss is the loaded model's mean next-token NLL on batch 0 of the new data.
  data_dir, manifest, tok = prepare.ensure(config.data)
  batch = objectives.make_batcher(
    config, shards.open_split(data_dir, 'train', manifest), tok, config.seed
  ).get_batch(0)
  logits = np.asarray(
    base.model.apply(
      {'params': base.params},
      batch['input_ids'],
      positions=batch['positions'],
      segment_ids=batch['segment_ids'],
    ),
    np.float64,
  )
  logp = logits - logits.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, batch['targets'][..., None], -1)[..., 0]
  want = (nll * batch['weights']).sum() / batch['weights'].sum()
  assert abs(read_metrics(workdir)[1]['train/loss'] - want) < 1e-4 * want

  out = run_script(*args, '--config.train.steps=2').stdout  # resume wins over init_checkpoint
  assert 'resumed from step 1' in out and 'continued pretraining' not in out
