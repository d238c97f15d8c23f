"""Preference data, reward model, DPO/IPO: losses by hand, log-probs by hand, and end to end.

The end-to-end tests start from the suite's shared `pretrained_gpt` (tests/conftest.py:
configs/gpt_base.py, 2 layers, d=128, 300 steps) and run dpo.py as a user would: a reward model must beat chance on held-out pairs of the offline default, and
DPO must widen the policy's chosen-vs-rejected log-prob margin on held-out pairs.
"""

import functools
import json
import math
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from lm import pretrained
from lm import losses
from lm import generate as gen
from lm import models as M
from lm.data import preference
from lm.jobs import dpo
from lm import sharding
from lm import trainer
from lm.data import tokenizer as tokenizer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = M.ModelConfig(
  vocab_size=64,
  hidden_size=32,
  num_layers=2,
  num_heads=4,
  mlp_dim=64,
  max_len=16,
  type_vocab_size=0,
  pre_ln=True,
  dropout_rate=0.0,
  attention_dropout_rate=0.0,
)


# ---------------------------------------------------------------- losses by hand


def _sigmoid(x):
  return 1.0 / (1.0 + math.exp(-x))


@pytest.mark.parametrize('beta', [0.1, 0.5])
def test_dpo_ipo_losses_match_hand_computation(beta):
  pi_c = np.array([-10.0, -20.0, -5.0, -30.0], np.float32)
  pi_r = np.array([-12.0, -18.0, -9.0, -30.5], np.float32)
  ref_c = np.array([-11.0, -19.0, -6.0, -29.0], np.float32)
  ref_r = np.array([-11.5, -19.5, -7.0, -31.0], np.float32)
  dpo_loss, rew_c, rew_r = dpo.preference_loss(pi_c, pi_r, ref_c, ref_r, beta, 'dpo')
  ipo, _, _ = dpo.preference_loss(pi_c, pi_r, ref_c, ref_r, beta, 'ipo')
  for i in range(4):
    h = (float(pi_c[i]) - float(ref_c[i])) - (float(pi_r[i]) - float(ref_r[i]))
    assert float(dpo_loss[i]) == pytest.approx(-math.log(_sigmoid(beta * h)), rel=1e-5)
    assert float(ipo[i]) == pytest.approx((h - 1.0 / (2.0 * beta)) ** 2, rel=1e-5)
    assert float(rew_c[i]) == pytest.approx(beta * (float(pi_c[i]) - float(ref_c[i])), rel=1e-5)
    assert float(rew_r[i]) == pytest.approx(beta * (float(pi_r[i]) - float(ref_r[i])), rel=1e-5)
  # Worked example, row 0, beta 0.1: h = (-10 + 11) - (-12 + 11.5) = 1.5.
  if beta == 0.1:
    assert float(dpo_loss[0]) == pytest.approx(math.log(1 + math.exp(-0.15)), rel=1e-6)  # 0.62096
    assert float(ipo[0]) == pytest.approx((1.5 - 5.0) ** 2, rel=1e-6)  # 12.25
  # Policy == reference: DPO loss log 2, IPO loss 1/(4 beta^2), no implicit reward.
  same, z, _ = dpo.preference_loss(pi_c, pi_r, pi_c, pi_r, beta, 'dpo')
  np.testing.assert_allclose(same, math.log(2.0), rtol=1e-6)
  np.testing.assert_allclose(z, 0.0)
  same_ipo, _, _ = dpo.preference_loss(pi_c, pi_r, pi_c, pi_r, beta, 'ipo')
  np.testing.assert_allclose(same_ipo, 1.0 / (4 * beta**2), rtol=1e-6)
  with pytest.raises(ValueError, match='loss='):
    dpo.preference_loss(pi_c, pi_r, ref_c, ref_r, beta, 'kto')


def test_bradley_terry_loss_by_hand():
  r_c, r_r = np.array([2.0, -1.0, 0.0]), np.array([0.5, 1.0, 0.0])
  got = dpo.bradley_terry_loss(r_c, r_r)
  want = [-math.log(_sigmoid(c - r)) for c, r in zip(r_c, r_r)]
  np.testing.assert_allclose(got, want, rtol=1e-6)


# ---------------------------------------------------------------- log-probs by hand


def _tiny_batch(n=8, t=16, seed=0):
  """Rows: random prompt of 3-6 tokens, response of 2-8 tokens, right padding with 0."""
  rng = np.random.default_rng(seed)
  out = {}
  for c in ('chosen', 'rejected'):
    ids, mask, resp = (np.zeros((n, t), np.int32) for _ in range(3))
    for i in range(n):
      p, r = int(rng.integers(3, 7)), int(rng.integers(2, 9))
      ids[i, : p + r] = rng.integers(1, TINY.vocab_size, p + r)
      mask[i, : p + r] = 1
      resp[i, p : p + r] = 1
    out.update({f'{c}_ids': ids, f'{c}_mask': mask, f'{c}_resp': resp})
  return out


def test_sequence_logps_equal_per_token_sum():
  model = M.Decoder(TINY)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16), jnp.int32)))['params']
  b = _tiny_batch()
  ids, mask, resp = b['chosen_ids'], b['chosen_mask'], b['chosen_resp']
  got = np.asarray(
    jax.jit(functools.partial(losses.sequence_logps, model))(params, ids, mask, resp)
  )
  # Direct: logits of each row alone, unpadded (no attention mask), then a per-token sum of
  # log_softmax over the response tokens, in float64 numpy.
  apply = jax.jit(lambda p, x: model.apply({'params': p}, x))
  for i in range(len(ids)):
    n = int(mask[i].sum())
    row = np.full((1, 16), 5, np.int32)  # filler after the row: causal, so it cannot matter
    row[0, :n] = ids[i, :n]
    logits = np.asarray(apply(params, row))[0, :n].astype(np.float64)
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    want = sum(logp[t - 1, ids[i, t]] for t in range(1, n) if resp[i, t])
    assert got[i] == pytest.approx(want, rel=1e-5, abs=1e-4)


def _state(model, init_inputs, lr=3e-3, seed=0, all_devices=False):
  cfg = ml_collections.ConfigDict(
    dict(
      lr=lr,
      steps=100,
      warmup_steps=0,
      schedule='constant',
      end_lr_fraction=0.0,
      weight_decay=0.0,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      clip_norm=1.0,
    )
  )
  tx = optax.adam(lr)
  # One device keeps the compile short; the cache test runs on every (simulated) device.
  mesh = sharding.make_mesh((-1, 1, 1), None if all_devices else jax.devices()[:1])
  state, sh = trainer.create_state(model, tx, mesh, seed, init_inputs)
  return cfg, tx, mesh, state, sh


@pytest.mark.parametrize('loss', ['dpo', pytest.param('ipo', marks=pytest.mark.slow)])
def test_preference_steps_fit_a_batch(loss):
  """The jitted sharded DPO/IPO step lowers its loss and widens the margin on one batch; the
  reward-model step learns to rank it; eval averages over rows weighted by `weight`."""
  model = M.Decoder(TINY)
  train_cfg, tx, mesh, state, sh = _state(model, M.policy_init_inputs(16))
  config = ml_collections.ConfigDict(
    dict(objective='dpo', loss=loss, beta=0.5, seed=0, train=train_cfg)
  )
  b = _tiny_batch(seed=1)
  logps = dpo.make_logps_fn(model, sh.params, mesh)
  ref_c, ref_r = (np.asarray(x) for x in logps(state.params, sharding.shard_batch(b, mesh)))
  batch = {**b, 'ref_chosen': ref_c, 'ref_rejected': ref_r, 'weight': np.ones(8, np.float32)}
  step = dpo.make_train_step(config, model, tx, sh, mesh)
  eval_step = dpo.make_eval_step(config, model, sh.params, mesh)
  before = dpo.preference_metrics(eval_step, state.params, [batch])
  assert before['loss'] == pytest.approx(math.log(2) if loss == 'dpo' else 1.0, rel=1e-5)
  for _ in range(12):
    state, m = step(state, sharding.shard_batch(batch, mesh))
  after = dpo.preference_metrics(eval_step, state.params, [batch])
  assert after['loss'] < before['loss'] - 0.1, (before, after)
  if loss == 'dpo':
    assert after['logp_margin'] > before['logp_margin'] + 1.0
  else:  # IPO pulls the log-ratio margin h towards 1/(2 beta) = 1, not beyond
    h = after['reward_margin'] / config.beta
    assert abs(h - 1.0) < 0.25 and after['logp_margin'] > before['logp_margin'] + 0.5
  assert after['reward_accuracy'] == 1.0
  # A weight-0 row does not count.
  padded = {k: np.concatenate([v, v[::-1]]) for k, v in batch.items()}  # 16 rows: any mesh
  padded['weight'][8:] = 0.0
  again = dpo.preference_metrics(eval_step, state.params, [padded])
  assert again['loss'] == pytest.approx(after['loss'], rel=1e-5)


@pytest.mark.slow  # 10 s of compiles; the fast tier keeps the DPO step
def test_reward_model_scores_last_real_token_and_learns():
  model = M.RewardModel(TINY)
  train_cfg, tx, mesh, state, sh = _state(model, M.reward_init_inputs(16))
  b = _tiny_batch(seed=2)
  ids, mask = b['chosen_ids'], b['chosen_mask']
  r = np.asarray(model.apply({'params': state.params}, ids, mask))
  # The score depends only on the real tokens: change the padding, same score.
  ids2 = np.where(mask == 1, ids, 7)
  np.testing.assert_allclose(model.apply({'params': state.params}, ids2, mask), r, rtol=1e-5)
  # ... and equals the head applied to the decoder's hidden state at the last real token.
  h = M.Decoder(TINY).apply(
    {'params': state.params['decoder']}, ids, attention_mask=mask, method='hidden'
  )
  last = mask.sum(1) - 1
  head = state.params['head']
  want = (
    np.asarray(h)[np.arange(len(ids)), last] @ np.asarray(head['kernel'])[:, 0]
    + np.asarray(head['bias'])[0]
  )
  np.testing.assert_allclose(r, want, rtol=1e-4, atol=1e-5)
  config = ml_collections.ConfigDict(dict(objective='reward', seed=0, train=train_cfg))
  batch = {**b, 'weight': np.ones(8, np.float32)}
  step = dpo.make_train_step(config, model, tx, sh, mesh)
  for _ in range(12):
    state, m = step(state, sharding.shard_batch(batch, mesh))
  m = jax.device_get(m)
  assert m['accuracy'] == 1.0 and m['loss'] < 0.5


@pytest.mark.slow  # an 8-device mesh compile
def test_reference_logps_cached_by_data_hash(tmp_path):
  model = M.Decoder(TINY)
  _, _, mesh, state, sh = _state(model, M.policy_init_inputs(16), all_devices=True)
  calls = []
  inner = dpo.make_logps_fn(model, sh.params, mesh)
  fn = lambda p, b: calls.append(1) or inner(p, b)  # noqa: E731
  b = _tiny_batch(n=13, seed=3)
  got, path, computed = dpo.reference_logps(fn, state.params, b, 8, mesh, str(tmp_path), 'ref@1')
  assert computed and os.path.exists(path) and len(calls) == 2  # 13 rows in batches of 8
  assert got['ref_chosen'].shape == (13,)
  with jax.default_device(jax.devices()[0]):
    direct = [
      losses.sequence_logps(
        model, jax.device_get(state.params), b[f'{c}_ids'], b[f'{c}_mask'], b[f'{c}_resp']
      )
      for c in ('chosen', 'rejected')
    ]
  np.testing.assert_allclose(got['ref_chosen'], direct[0], rtol=1e-5)
  np.testing.assert_allclose(got['ref_rejected'], direct[1], rtol=1e-5)
  again, path2, computed2 = dpo.reference_logps(
    fn, state.params, b, 8, mesh, str(tmp_path), 'ref@1'
  )
  assert not computed2 and path2 == path and len(calls) == 2  # read back, model not run
  np.testing.assert_array_equal(again['ref_chosen'], got['ref_chosen'])
  # Other data or another reference: another key.
  _, path3, c3 = dpo.reference_logps(fn, state.params, b, 8, mesh, str(tmp_path), 'ref@2')
  b2 = dict(b, chosen_ids=b['chosen_ids'][::-1].copy())
  _, path4, c4 = dpo.reference_logps(fn, state.params, b2, 8, mesh, str(tmp_path), 'ref@1')
  assert c3 and c4 and len({path, path3, path4}) == 3


# ---------------------------------------------------------------- data


@pytest.fixture(scope='module')
def bpe():
  from lm.data import corpus

  return tokenizer_lib.train_tokenizer(corpus.python_docs_corpus()[:60], 'bpe', 600)


def test_python_docs_pairs_deterministic_and_held_out():
  train, held, test = preference.python_docs_pairs(seed=0, eval_fraction=0.15, test_fraction=0.1)
  assert len(train) > 500 and len(held) > 80 and len(test) > 80
  assert (train, held, test) == preference.python_docs_pairs(seed=0, eval_fraction=0.15)
  for a, b in ((train, held), (train, test), (held, test)):
    assert not {p['prompt'] for p in a} & {p['prompt'] for p in b}
    assert not {p['chosen'] for p in a} & {p['chosen'] for p in b}
  for p in train[:50] + held[:50]:
    assert p['chosen'] != p['rejected'] and p['chosen'].startswith(' ')
    assert sorted(p['chosen'].split()) == sorted(p['rejected'].split())  # shuffled words
  other, _, _ = preference.python_docs_pairs(seed=0, eval_fraction=0.15, rejected='other')
  chosen_pool = {p['chosen'] for p in other}
  assert all(p['rejected'] in chosen_pool and p['rejected'] != p['chosen'] for p in other[:50])
  mix, _, _ = preference.python_docs_pairs(seed=0, eval_fraction=0.15, rejected='mix')
  shuffled = sum(sorted(p['chosen'].split()) == sorted(p['rejected'].split()) for p in mix)
  assert 0.3 < shuffled / len(mix) < 0.7


def test_encode_pairs_masks_the_prompt(bpe):
  pairs = [
    {
      'prompt': 'The assert statement',
      'chosen': ' is for debugging.',
      'rejected': ' debugging. for is',
    },
    {'prompt': 'word ' * 40, 'chosen': ' tail ' * 40, 'rejected': ' x'},
  ]
  a = preference.encode_pairs(pairs, bpe, seq_len=32, max_prompt_len=12)
  eos = bpe.eos_id
  row = a['chosen_ids'][0]
  assert row[0] == eos  # bos, as every pretraining document follows an eos
  n = a['chosen_mask'][0].sum()
  resp = row[a['chosen_resp'][0] == 1]
  assert bpe.decode(resp[:-1]) == ' is for debugging.' and resp[-1] == eos
  assert bpe.decode(row[1:n][a['chosen_resp'][0][1:n] == 0]) == 'The assert statement'
  assert np.all(row[n:] == bpe.pad_id)
  # Long rows: prompt cut to its last 12 tokens, response to what fits.
  assert a['chosen_mask'][1].sum() == 32 and (a['chosen_resp'][1] == 0).sum() == 12
  assert a['rejected_resp'][1].sum() == len(bpe.encode(' x')) + 1
  with pytest.raises(ValueError, match='max_prompt_len'):
    preference.encode_pairs(pairs, bpe, 16, 16)


def test_batches_resume_exactly_and_cover_eval(bpe):
  pairs = [{'prompt': f'p{i}', 'chosen': f' c{i}', 'rejected': f' r{i}'} for i in range(10)]
  a = preference.encode_pairs(pairs, bpe, 12, 6)
  b1 = preference.train_batch(a, 7, 4, seed=0)
  np.testing.assert_array_equal(b1['chosen_ids'], preference.train_batch(a, 7, 4, 0)['chosen_ids'])
  # One epoch (with wrap-around) sees every row once before repeating.
  seen = np.concatenate([preference.train_batch(a, s, 5, 0)['chosen_ids'] for s in range(2)])
  assert len({r.tobytes() for r in seen}) == 10
  halves = [preference.train_batch(a, 3, 4, 0, p, 2)['chosen_ids'] for p in range(2)]
  np.testing.assert_array_equal(
    np.concatenate(halves), preference.train_batch(a, 3, 4, 0)['chosen_ids']
  )
  ev = list(preference.eval_batches(a, 4))
  assert [int(b['weight'].sum()) for b in ev] == [4, 4, 2]
  np.testing.assert_array_equal(np.concatenate([b['chosen_ids'] for b in ev])[:10], a['chosen_ids'])


def test_jsonl_source(tmp_path):
  rows = [
    {'q': f'prompt {i}', 'good': f' yes {i}', 'bad': f' no {i}', 'extra': 1} for i in range(40)
  ]
  path = tmp_path / 'pairs.jsonl'
  path.write_text('\n'.join(json.dumps(r) for r in rows) + '\n')
  cfg = ml_collections.ConfigDict(
    dict(
      source='files',
      files=str(path),
      eval_files='',
      eval_fraction=0.25,
      test_fraction=0.25,
      prompt_key='q',
      chosen_key='good',
      rejected_key='bad',
      max_pairs=0,
    )
  )
  got = preference.load_splits(cfg)
  train, held = preference.load_pairs(cfg)
  assert (train, held) == (got['train'], got['validation'])
  assert len(train) + len(held) + len(got['test']) == 40 and 0 < len(held) < 20
  prompts = {k: {p['prompt'] for p in v} for k, v in got.items()}
  assert 0 < len(prompts['test']) < 20 and not prompts['test'] & (
    prompts['train'] | prompts['validation']
  )
  assert (
    train[0] == {'prompt': 'prompt 0', 'chosen': ' yes 0', 'rejected': ' no 0'}
    or held[0]['prompt'] == 'prompt 0'
  )
  (tmp_path / 'held.jsonl').write_text(
    '\n'.join(
      json.dumps({'q': p['prompt'], 'good': p['chosen'], 'bad': p['rejected']}) for p in held
    )
  )
  cfg.eval_files, cfg.max_pairs = str(tmp_path / 'held.jsonl'), 7
  train2, held2 = preference.load_pairs(cfg)
  assert len(train2) == 7 and held2 == held
  cfg.chosen_key = 'nope'
  with pytest.raises(ValueError, match='chosen_key'):
    preference.load_pairs(cfg)


@pytest.mark.slow  # imports TensorFlow (tfds): ~10 s the fast tier does not pay
def test_tfds_source(tmp_path):
  """A TFDS dataset by name, with configurable field names, read from data_dir."""
  import tensorflow_datasets as tfds

  from etils import epath

  class TinyPrefs(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):  # as in lm.data.text_dataset: tfds cannot locate a test module's code
      return epath.Path(__file__)

    def _info(self):
      t = tfds.features.Text()
      return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({'question': t, 'good': t, 'bad': t})
      )

    def _split_generators(self, dl_manager):
      return {
        'train': self._generate_examples(30),
        'validation': self._generate_examples(6),
        'test': self._generate_examples(4),
      }

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {'question': f'q{i}', 'good': f' a{i}', 'bad': f' b{i}'}

  TinyPrefs(data_dir=str(tmp_path)).download_and_prepare()
  cfg = ml_collections.ConfigDict(
    dict(
      source='tfds',
      tfds_name='tiny_prefs',
      data_dir=str(tmp_path),
      split='train',
      eval_split='validation',
      test_split='test',
      prompt_key='question',
      chosen_key='good',
      rejected_key='bad',
    )
  )
  got = preference.load_splits(cfg)
  train, held = got['train'], got['validation']
  assert len(train) == 30 and len(held) == 6 and len(got['test']) == 4
  assert sorted(p['prompt'] for p in held) == sorted(f'q{i}' for i in range(6))
  assert all(p['chosen'] == ' a' + p['prompt'][1:] for p in train)
  cfg.tfds_name = 'not_prepared_prefs'
  with pytest.raises(FileNotFoundError, match='tfds build'):
    preference.load_pairs(cfg)


# ---------------------------------------------------------------- end to end


def _run(*args, timeout=600, code=0):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1')
  out = subprocess.run(
    [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
  )
  assert out.returncode == code, out.stdout[-3000:] + out.stderr[-3000:]
  return out.stdout if code == 0 else out.stderr


def _eval_py(workdir) -> dict:
  """eval.py on a dpo.py workdir: its latest checkpoint's metrics on the validation pairs."""
  _run('eval.py', f'--checkpoint={workdir}', '--split=validation')
  with open(os.path.join(workdir, 'eval_results.json'), encoding='utf-8') as f:
    return json.load(f)


def _evals(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  return {
    r['step']: {k[5:]: v for k, v in r.items() if k.startswith('eval/')}
    for r in rows
    if any(k.startswith('eval/') for k in r)
  }


DATA = ['--config.data.seq_len=64', '--config.data.max_prompt_len=24']


@pytest.mark.slow
def test_reward_model_beats_chance_on_held_out_pairs(pretrained_gpt, tmp_path):
  """Measured from pretrained_gpt, 80 steps: held-out pairwise accuracy 0.592 -> 0.877."""
  wd = str(tmp_path / 'rm')
  _run(
    'dpo.py',
    '--config=configs/reward.py',
    f'--workdir={wd}',
    f'--config.init_checkpoint={pretrained_gpt}',
    '--config.train.steps=80',
    '--config.eval_every=80',
    '--config.log_every=40',
    '--config.eval_batch_size=64',
    *DATA,
  )
  ev = _evals(wd)
  print('reward model held-out accuracy:', ev[0]['accuracy'], '->', ev[80]['accuracy'])
  assert abs(ev[0]['accuracy'] - 0.5) < 0.15  # an untrained head is at chance
  assert ev[80]['accuracy'] > 0.75
  assert ev[80]['loss'] < ev[0]['loss']
  # eval.py reproduces the run's last held-out figures; generation refuses it on one line.
  res = _eval_py(wd)
  assert res['objective'] == 'reward' and res['step'] == 80
  for k in ('accuracy', 'loss', 'margin'):
    assert res[k] == pytest.approx(ev[80][k], rel=1e-5, abs=1e-6), k
  err = _run('generate.py', f'--checkpoint={wd}', '--prompt=x', code=2)
  assert len(err.strip().splitlines()) == 1 and 'reward model' in err, err


@pytest.mark.slow
def test_dpo_widens_held_out_margin_and_resumes(pretrained_gpt, tmp_path):
  wd = str(tmp_path / 'dpo')
  args = [
    'dpo.py',
    '--config=configs/dpo.py',
    f'--workdir={wd}',
    f'--config.init_checkpoint={pretrained_gpt}',
    '--config.data.max_pairs=320',
    '--config.eval_every=20',
    '--config.log_every=20',
    '--config.eval_batch_size=64',
    *DATA,
  ]
  out = _run(*args, '--config.train.steps=20')
  assert out.count('computed, saved to') == 3  # train, validation, test
  out = _run(*args, '--config.train.steps=40')  # resumes; reference log-probs read back
  assert 'resumed from step 20' in out and out.count('read from') == 3
  assert len([f for f in os.listdir(wd) if re.match(r'reference_logps-\w+\.npz', f)]) == 3
  ev = _evals(wd)
  before, after = ev[0], ev[40]
  print(
    'DPO held-out log-prob margin (chosen - rejected):',
    before['logp_margin'],
    '->',
    after['logp_margin'],
    '; implicit reward accuracy',
    after['reward_accuracy'],
  )
  assert before['logp_margin'] == pytest.approx(before['ref_logp_margin'], rel=1e-4)
  assert before['loss'] == pytest.approx(math.log(2), rel=1e-4)
  assert (
    after['logp_margin'] > before['logp_margin'] + 1.0
  )  # measured (pretrained_gpt): 31.11 -> 41.24
  assert after['reward_accuracy'] > 0.8 and after['loss'] < before['loss']  # measured acc 0.977
  # The tuned policy loads back as a plain Decoder with its tokenizer.
  got = pretrained.load(wd)
  model, params, tok = got.model, got.params, got.tokenizer
  assert (got.job, got.step, type(model)) == ('dpo', 40, M.Decoder) and tok.eos_id is not None
  # ... and so does eval.py (the run's last held-out figures) and generate.py (greedy, the
  # same tokens as lm.generate on those params).
  res = _eval_py(wd)
  assert res['objective'] == 'dpo' and res['step'] == 40
  for k in ('loss', 'reward_accuracy', 'logp_margin', 'ref_logp_margin'):
    assert res[k] == pytest.approx(after[k], rel=1e-5, abs=1e-6), k
  prompt = 'The assert statement'
  out = _run('generate.py', f'--checkpoint={wd}', f'--prompt={prompt}', '--max_new_tokens=8')
  want = gen.generate(
    model, params, [tok.encode(prompt)], max_new_tokens=8, eos_id=tok.eos_id, pad_id=tok.pad_id or 0
  )
  assert out.split('--- 0\n', 1)[1].rstrip('\n') == prompt + tok.decode(want[0][0]), out
