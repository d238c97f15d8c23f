"""PPO / GRPO / RLOO (lm/ppo.py, ppo.py): advantages and losses against hand-written loops and
worked examples, log-probs against lm.jobs.dpo's right-padded reference, the several-updates step
against a plain loop of updates, and ppo.py end to end on the suite's small pretrained GPT."""

import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from conftest import run_script

from lm import pretrained
from lm import losses
from lm import generate as gen
from lm import models as M
from lm import optim
from lm.jobs import ppo
from lm import sharding
from lm import trainer

TINY = M.ModelConfig(
  vocab_size=64,
  hidden_size=32,
  num_layers=2,
  num_heads=4,
  mlp_dim=64,
  max_len=24,
  type_vocab_size=0,
  pre_ln=True,
  dropout_rate=0.0,
  attention_dropout_rate=0.0,
)
EOS = 1


# ---------------------------------------------------------------- math by hand


def test_response_mask_ends_at_the_first_eos():
  tokens = np.array(
    [[5, 6, EOS, 0, 0], [EOS, EOS, EOS, EOS, EOS], [7, 8, 9, 10, 11], [4, EOS, 3, EOS, 2]]
  )
  want = [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
  np.testing.assert_array_equal(ppo.response_mask(jnp.asarray(tokens), EOS), want)


def _gae_loop(rewards, values, mask, gamma, lam):
  """Textbook GAE, one row at a time over its response (length = sum of its mask)."""
  adv, ret = np.zeros_like(rewards), np.zeros_like(rewards)
  for b in range(rewards.shape[0]):
    n = int(mask[b].sum())
    last = 0.0
    for t in reversed(range(n)):
      next_v = values[b, t + 1] if t + 1 < n else 0.0
      delta = rewards[b, t] + gamma * next_v - values[b, t]
      last = delta + gamma * lam * last
      adv[b, t] = last
      ret[b, t] = last + values[b, t]
  return adv, ret


def test_gae_matches_a_python_loop_and_a_worked_example():
  rng = np.random.default_rng(0)
  r = rng.normal(size=(4, 7)).astype(np.float32)
  v = rng.normal(size=(4, 7)).astype(np.float32)
  m = (np.arange(7)[None] < np.array([[7], [3], [1], [5]])).astype(np.float32)
  for gamma, lam in ((1.0, 0.95), (0.9, 0.8), (0.99, 1.0)):
    adv, ret = ppo.gae(jnp.asarray(r), jnp.asarray(v), jnp.asarray(m), gamma, lam)
    want_adv, want_ret = _gae_loop(r, v, m, gamma, lam)
    np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-6)
  # Worked example: rewards (0, 0, 1), values (0.5, 0.2, 0.1), gamma 1, lam 0.5:
  # deltas = (0 + 0.2 - 0.5, 0 + 0.1 - 0.2, 1 - 0.1) = (-0.3, -0.1, 0.9);
  # A_2 = 0.9, A_1 = -0.1 + 0.5 * 0.9 = 0.35, A_0 = -0.3 + 0.5 * 0.35 = -0.125.
  adv, ret = ppo.gae(
    jnp.array([[0.0, 0.0, 1.0, 7.0]]),
    jnp.array([[0.5, 0.2, 0.1, 9.0]]),
    jnp.array([[1.0, 1, 1, 0]]),
    1.0,
    0.5,
  )
  np.testing.assert_allclose(adv, [[-0.125, 0.35, 0.9, 0.0]], rtol=1e-6)
  np.testing.assert_allclose(ret, [[0.375, 0.55, 1.0, 0.0]], rtol=1e-6)


def test_kl_penalised_rewards_by_hand():
  logp = jnp.array([[-1.0, -2.0, -0.5, -3.0], [-1.0, -1.0, -1.0, -1.0]])
  ref = jnp.array([[-1.5, -1.0, -0.5, -9.0], [-2.0, -2.0, -2.0, -2.0]])
  mask = jnp.array([[1.0, 1, 1, 0], [1, 1, 1, 1]])
  r = ppo.kl_penalised_rewards(jnp.array([2.0, -1.0]), logp, ref, mask, 0.1)
  # row 0: -0.1 * (0.5, -1, 0) on its three tokens, score 2 on the third (its last);
  # row 1: -0.1 * 1 everywhere, score -1 on the fourth.
  np.testing.assert_allclose(r, [[-0.05, 0.1, 2.0, 0.0], [-0.1, -0.1, -0.1, -1.1]], rtol=1e-6)


def test_group_advantages_by_hand():
  r = jnp.array([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 4.0, -4.0])
  # RLOO, groups of 4: r_i - (sum - r_i) / 3. Group 1: sum 12 -> (1 - 11/3, 2 - 10/3, ...).
  rloo = ppo.group_advantages(r, 4, 'rloo')
  want = []
  for g in (r[:4], r[4:]):
    g = np.asarray(g)
    want += [g[i] - (g.sum() - g[i]) / 3 for i in range(4)]
  np.testing.assert_allclose(rloo, want, rtol=1e-6)
  np.testing.assert_allclose(rloo[:4], [-8 / 3, -4 / 3, 0.0, 4.0], rtol=1e-6, atol=1e-6)
  # GRPO: group 1 mean 3, sample std sqrt((4 + 1 + 0 + 9) / 3).
  grpo = ppo.group_advantages(r, 4, 'grpo', eps=0.0)
  s = math.sqrt(14 / 3)
  np.testing.assert_allclose(grpo[:4], [-2 / s, -1 / s, 0.0, 3 / s], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(grpo[4:], np.asarray(r[4:]) / math.sqrt(32 / 3), rtol=1e-6)
  with pytest.raises(ValueError, match='kind='):
    ppo.group_advantages(r, 4, 'reinforce')


def test_clipped_losses_and_k3_by_hand():
  old = jnp.zeros(4)
  logp = jnp.log(jnp.array([1.5, 0.5, 1.1, 0.7]))  # ratios 1.5, 0.5, 1.1, 0.7
  adv = jnp.array([1.0, 1.0, -2.0, -2.0])
  loss, clipped = ppo.clipped_policy_loss(logp, old, adv, 0.2)
  # A > 0: min(ratio, 1.2) * A -> -1.2 (clipped), -0.5; A < 0: max(ratio, 0.8) * A -> 2.2, 1.6 (clipped).
  np.testing.assert_allclose(loss, [-1.2, -0.5, 2.2, 1.6], rtol=1e-6)
  np.testing.assert_array_equal(clipped, [1, 0, 0, 1])
  v, old_v, ret = jnp.array([1.0, 0.0, 2.0]), jnp.array([0.5, 0.1, 2.1]), jnp.array([1.0, 1.0, 0.0])
  vl = ppo.clipped_value_loss(v, old_v, ret, 0.2)
  # V_clipped = (0.7, 0.0, 2.0): 0.5 * max((0, 0.09), (1, 1), (4, 4)).
  np.testing.assert_allclose(vl, [0.045, 0.5, 2.0], rtol=1e-6)
  # k3 = e^d - d - 1 with d = ref - logp: d = 0 -> 0; d = 1 -> e - 2.
  np.testing.assert_allclose(
    ppo.k3_kl(jnp.array([-1.0, -2.0]), jnp.array([-1.0, -1.0])), [0.0, math.e - 2], rtol=1e-6
  )


def test_masked_whiten_matches_numpy():
  rng = np.random.default_rng(1)
  x = rng.normal(3.0, 2.0, size=(3, 5)).astype(np.float32)
  m = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], np.float32)
  got = np.asarray(ppo.masked_whiten(jnp.asarray(x), jnp.asarray(m)))
  sel = x[m > 0]
  np.testing.assert_allclose(got[m > 0], (sel - sel.mean()) / sel.std(), rtol=1e-4, atol=1e-5)
  assert np.all(got[m == 0] == 0)


def test_config_prompts_are_the_reward_models_splits_and_bad_settings_fail():
  """configs/ppo.py reads the preference data's prompts with the reward model's defaults, so
  its held-out prompts are held out from the reward model too (tests/test_contamination.py
  checks those against pretraining); a wrong algorithm or group size fails at once."""
  from configs import ppo as ppo_config  # noqa: PLC0415
  from lm import defaults  # noqa: PLC0415

  c, pref = ppo_config.get_config(), defaults.preference().data
  assert {k: c.data[k] for k in pref if k != 'seq_len'} == {
    k: pref[k] for k in pref if k != 'seq_len'
  }
  ppo.check_config(c)
  for bad, match in (
    (dict(algorithm='a2c'), 'algorithm='),
    (dict(algorithm='grpo'), 'group_size >= 2'),
    (dict(group_size=2), 'group_size=1'),
    (dict(algorithm='rloo', group_size=3), 'multiple of'),
  ):
    b = ppo_config.get_config()
    b.update(bad)
    with pytest.raises(ValueError, match=match):
      ppo.check_config(b)


# ---------------------------------------------------------------- model pieces


def nn_unbox(tree):
  return nn.unbox(tree)


def _params(model, seed=0):
  return jax.jit(
    lambda: model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 8), jnp.int32))['params']
  )()


PROMPTS = [[EOS, 5, 6, 7, 8], [EOS, 5, 6, 7, 8], [EOS, 9], [EOS, 9]]  # groups of 2


@pytest.fixture(scope='module')
def rollout():
  """One sampled rollout of a random tiny actor-critic whose reference is itself."""
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  ac, rm = M.ActorCritic(TINY), M.RewardModel(TINY)
  params = nn_unbox(_params(ac))
  rm_params = nn_unbox(
    jax.jit(lambda: rm.init(jax.random.PRNGKey(1), *M.reward_init_inputs(8))['params'])()
  )
  ids, mask = gen.left_pad(PROMPTS, 0)
  s = gen.Settings(max_new_tokens=6, strategy='sample', eos_id=EOS, pad_id=0)
  sampler = ppo.make_sampler(ac, rm, s, mesh)
  r = sampler(params, params['decoder'], rm_params, ids, mask, jax.random.PRNGKey(9))
  return ac, rm, params, rm_params, jax.device_get(r)


@pytest.mark.slow  # compiles the whole rollout (decode + three forward passes): ~30 s
def test_sampler_logps_and_scores_match_right_padded_references(rollout):
  """The rollout's log-probs (left-padded prompts, positions counted as generation does) equal
  lm.losses.sequence_logps on the same text right-padded, and the score is the reward model's on
  the right-padded sequence; with policy == reference the KL is exactly 0."""
  ac, rm, params, rm_params, r = rollout
  np.testing.assert_array_equal(r['kl'], 0.0)
  np.testing.assert_array_equal(r['logp'], r['ref_logp'])
  assert 0 < r['resp_mask'].sum() < r['resp_mask'].size  # some rows stopped at EOS, some not
  t = r['ids'].shape[1]
  ref_ids, ref_mask, ref_resp = (np.zeros((len(PROMPTS), t), np.int32) for _ in range(3))
  for i, p in enumerate(PROMPTS):
    resp = [int(x) for x, m in zip(r['response'][i], r['resp_mask'][i]) if m]
    row = p + resp
    ref_ids[i, : len(row)], ref_mask[i, : len(row)] = row, 1
    ref_resp[i, len(p) : len(row)] = 1
  want = losses.sequence_logps(M.Decoder(TINY), params['decoder'], ref_ids, ref_mask, ref_resp)
  np.testing.assert_allclose((r['logp'] * r['resp_mask']).sum(-1), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    r['score'], rm.apply({'params': rm_params}, ref_ids, ref_mask), rtol=1e-5, atol=1e-6
  )


def _config(algorithm='ppo', **kw):
  c = ml_collections.ConfigDict(
    dict(
      algorithm=algorithm,
      group_size=1 if algorithm == 'ppo' else 2,
      kl_coef=0.1,
      gamma=1.0,
      lam=0.95,
      clip=0.2,
      value_clip=0.2,
      vf_coef=0.1,
      ent_coef=0.0,
      whiten_advantages=True,
    )
  )
  c.update(kw)
  return c  # the fields ppo.rollout_batch and ppo.make_loss_fn read


@pytest.mark.slow  # shares the compiled rollout above
@pytest.mark.parametrize('algorithm', ['ppo', 'grpo', 'rloo'])
def test_advantages_and_first_update_loss_by_hand(rollout, algorithm):
  """Advantages of a real rollout (policy == reference, so no KL): ppo = the GAE loop on the
  score placed at each row's last token; rloo = s_i - s_j within each pair; grpo = +-1/sqrt(2)
  for a pair. At the rollout's own params the ratio is 1: policy loss = -mean advantage, nothing
  clipped, approx_kl 0, ppo's value loss = 0.5 mean (V - R)^2, grpo's KL term 0."""
  ac, _, params, _, r = rollout
  config = _config(algorithm, whiten_advantages=False)
  batch, stats = jax.jit(lambda r: ppo.rollout_batch(config, r))(r)
  loss_fn, norms_fn = ppo.make_loss_fn(config, ac)
  n_tok = norms_fn(batch)
  loss, aux = jax.jit(lambda p, b, n: loss_fn(p, b, None, n))(params, batch, n_tok)
  m, score, values = r['resp_mask'], r['score'], r['values']
  adv = np.asarray(batch['advantages'])
  if algorithm == 'ppo':
    rewards = np.zeros_like(m)
    for i, n in enumerate(m.sum(1).astype(int)):
      rewards[i, n - 1] = score[i]
    want, want_ret = _gae_loop(rewards, values, m, 1.0, 0.95)
    np.testing.assert_allclose(batch['returns'], want_ret, rtol=1e-5, atol=1e-6)
  else:
    other = score.reshape(-1, 2)[:, ::-1].reshape(-1)
    seq = score - other if algorithm == 'rloo' else np.sign(score - other) / math.sqrt(2)
    want = seq[:, None] * m
  np.testing.assert_allclose(adv, want, rtol=1e-4, atol=1e-5)
  assert float(n_tok) == m.sum() and float(stats['kl']) == 0.0
  assert float(aux['policy_loss']) == pytest.approx(-(want * m).sum() / m.sum(), rel=1e-4, abs=1e-6)
  assert float(aux['clipfrac']) == 0.0 and float(aux['approx_kl']) == pytest.approx(0.0, abs=1e-10)
  if algorithm == 'ppo':
    vl = 0.5 * ((values - want_ret) ** 2 * m).sum() / m.sum()
    assert float(aux['value_loss']) == pytest.approx(vl, rel=1e-5)
    assert float(loss) == pytest.approx(float(aux['policy_loss']) + 0.1 * vl, rel=1e-5)
  if algorithm == 'grpo':
    assert float(aux['kl_k3']) == pytest.approx(0.0, abs=1e-7)
  # Whitened (the default), the advantages are the same numbers standardised over the tokens.
  config.whiten_advantages = True
  whitened = jax.jit(lambda r: ppo.rollout_batch(config, r))(r)[0]['advantages']
  np.testing.assert_allclose(
    whitened, ppo.masked_whiten(jnp.asarray(want), m), rtol=1e-4, atol=1e-5
  )


def test_several_updates_per_step_equal_a_loop_of_updates():
  """train.minibatches x train.epochs_per_batch: each epoch shuffles the batch (the step's
  documented permutation) and makes one update per minibatch, exactly as a Python loop of
  single updates would; the schedule still counts steps."""
  cfg = ml_collections.ConfigDict(
    dict(
      seed=0,
      train=dict(
        batch_size=8,
        steps=10,
        lr=0.1,
        warmup_steps=2,
        schedule='linear',
        end_lr_fraction=0.0,
        weight_decay=0.0,
        b1=0.9,
        b2=0.999,
        eps=1e-6,
        clip_norm=0.0,
        grad_accum_steps=1,
        minibatches=2,
        epochs_per_batch=3,
      ),
    )
  )
  tx = optim.make(cfg.train)
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  rng = np.random.default_rng(0)
  batch = {
    'x': rng.normal(size=(8, 3)).astype(np.float32),
    'y': rng.normal(size=(8,)).astype(np.float32),
  }

  def loss_fn(p, b, r):
    del r
    err = b['x'] @ p['w'] - b['y']
    return jnp.mean(err**2), {'mse': jnp.mean(err**2)}

  params = {'w': jnp.zeros(3)}
  state = trainer.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
  shard = jax.tree.map(
    lambda _: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()), state
  )
  step = trainer.make_train_step(loss_fn, tx, shard, mesh, cfg)
  got = state
  for _ in range(2):
    got, m = step(got, batch)
  # The loop: the same permutations, one optax update per minibatch (rows i, i+2, ...).
  p = {'w': jnp.zeros(3)}  # the step donated `params`
  opt = tx.init(p)
  for s in range(2):
    r = jax.random.fold_in(jax.random.PRNGKey(cfg.seed + 1), s)
    for e in range(3):
      perm = np.asarray(jax.random.permutation(jax.random.fold_in(r, e), 8))
      for i in range(2):
        rows = perm[i::2]
        g = jax.grad(lambda q: loss_fn(q, {k: v[rows] for k, v in batch.items()}, None)[0])(p)
        u, opt = tx.update(g, opt, p)
        p = optax.apply_updates(p, u)
  np.testing.assert_allclose(got.params['w'], p['w'], rtol=1e-5, atol=1e-6)
  assert int(got.step) == 2
  # The schedule in steps: after 2 steps (12 updates) the lr is the step-2 value of the schedule.
  assert float(m['learning_rate']) == pytest.approx(float(optim.schedule(cfg.train)(1)), rel=1e-6)
  assert optim.updates_per_step(cfg.train) == 6


# ---------------------------------------------------------------- end to end


def _rows(workdir, prefix):
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8')]
  n = len(prefix) + 1
  return {
    r['step']: {k[n:]: v for k, v in r.items() if k.startswith(prefix + '/')}
    for r in rows
    if any(k.startswith(prefix + '/') for k in r)
  }


SMALL = [
  '--config.data.max_prompt_len=24',
  '--config.max_new_tokens=16',
  '--config.eval_batch_size=64',
  '--config.log_every=2',
]


@pytest.fixture(scope='module')
def reward_model(pretrained_gpt, tmp_path_factory):
  """A reward model on the suite's small GPT (configs/reward.py, 40 steps, as tests/test_rlhf.py
  trains it but shorter)."""
  wd = tmp_path_factory.mktemp('rm')
  run_script(
    'dpo.py',
    '--config=configs/reward.py',
    f'--workdir={wd}',
    f'--config.init_checkpoint={pretrained_gpt}',
    '--config.train.steps=40',
    '--config.eval_every=40',
    '--config.data.seq_len=64',
    '--config.data.max_prompt_len=24',
  )
  return wd


def _ppo_args(workdir, pretrained_gpt, reward_model, algorithm, *extra):
  return [
    'ppo.py',
    '--config=configs/ppo.py',
    f'--workdir={workdir}',
    f'--config.init_checkpoint={pretrained_gpt}',
    f'--config.reward_model={reward_model}',
    f'--config.algorithm={algorithm}',
    '--config.group_size=' + ('1' if algorithm == 'ppo' else '4'),
    '--config.train.batch_size=16',
    '--config.train.minibatches=2',
    '--config.train.epochs_per_batch=2',
    '--config.train.lr=1e-4',
    '--config.eval_every=2',
    *SMALL,
    *extra,
  ]


@pytest.mark.slow
def test_ppo_end_to_end(pretrained_gpt, reward_model, tmp_path, run):
  """ppo.py from the shared small GPT against a reward model: 2 steps, then resumed to 3.

  Step 0's held-out KL is exactly 0 (the policy is the reference); a resumed run continues at
  step 2; the test row holds the policy's figures, the starting policy's and best-of-4's (its
  KL figure is log 4 - 3/4); eval.py reproduces the test figures; generate.py samples the
  policy like lm.generate on load_finetuned's decoder."""
  wd = str(tmp_path / 'ppo')
  args = _ppo_args(wd, pretrained_gpt, reward_model, 'ppo', '--config.best_of_n=4')
  run(*args, '--config.train.steps=2')
  out = run(*args, '--config.train.steps=3').stdout
  assert 'resumed from step 2' in out, out
  ev, train, test = _rows(wd, 'eval'), _rows(wd, 'train'), _rows(wd, 'test')[3]
  assert sorted(ev) == [0, 2, 3] and ev[0]['kl'] == 0.0, ev
  assert ev[3]['kl'] != 0.0 and 'value_loss' in train[3]
  print('held-out score by step:', {s: round(e['score'], 4) for s, e in ev.items()})
  assert test['best_of_n'] == 4
  assert test['best_of_n_kl_bound'] == pytest.approx(math.log(4) - 0.75, rel=1e-6)
  assert test['best_of_1_score'] <= test['best_of_2_score'] <= test['best_of_4_score']
  # eval.py: the same test figures from the saved policy.
  run('eval.py', f'--checkpoint={wd}')
  with open(os.path.join(wd, 'eval_results.json'), encoding='utf-8') as f:
    res = json.load(f)
  assert res['job'] == 'ppo' and res['step'] == 3 and res['split'] == 'test'
  for k in ('score', 'kl', 'start_score', 'response_len'):
    assert res[k] == pytest.approx(test[k], rel=1e-4, abs=1e-5), k
  got = pretrained.load(wd)
  assert (got.job, got.step, type(got.model)) == ('ppo', 3, M.Decoder)
  model, params, tok = got.model, got.params, got.tokenizer
  prompt = 'The assert statement'
  out = run('generate.py', f'--checkpoint={wd}', f'--prompt={prompt}', '--max_new_tokens=8')
  want = gen.generate(
    model, params, [tok.encode(prompt)], max_new_tokens=8, eos_id=tok.eos_id, pad_id=tok.pad_id or 0
  )
  text = (prompt + tok.decode(want[0][0])).rstrip('\n')  # print() adds one; a sample may end in one
  assert out.stdout.split('--- 0\n', 1)[1].rstrip('\n') == text


@pytest.mark.slow
@pytest.mark.parametrize('algorithm', ['grpo', 'rloo'])
def test_critic_free_end_to_end(pretrained_gpt, reward_model, tmp_path, run, algorithm):
  """grpo / rloo through ppo.py, 2 steps of 4 prompts x 4 responses: no value loss, grpo logs its
  k3 KL term; held-out KL 0 at step 0 and not after."""
  wd = str(tmp_path / algorithm)
  run(
    *_ppo_args(wd, pretrained_gpt, reward_model, algorithm, '--config.best_of_n=0'),
    '--config.train.steps=2',
  )
  ev, train, test = _rows(wd, 'eval'), _rows(wd, 'train'), _rows(wd, 'test')[2]
  assert ev[0]['kl'] == 0.0 and ev[2]['kl'] != 0.0 and 'best_of_n' not in test
  assert 'value_loss' not in train[2] and ('kl_k3' in train[2]) == (algorithm == 'grpo')


# ---------------------------------------------------------------- the engine backend


@pytest.fixture(scope='module')
def grpo():
  """What both backends' GRPO runs share, compiled once: config, models, params, the update."""
  config = _config('grpo', seed=0, generate=dict(backend='static', slots=0))
  config.train = ml_collections.ConfigDict(
    dict(
      batch_size=len(PROMPTS), steps=3, lr=3e-2, warmup_steps=0, schedule='constant',
      end_lr_fraction=0.0, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-6, clip_norm=1.0,
      grad_accum_steps=1, minibatches=2, epochs_per_batch=1,
    )
  )  # fmt: skip
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  ac, rm = M.ActorCritic(TINY), M.RewardModel(TINY)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  params = jax.device_put(nn_unbox(_params(ac)), replicated)  # as the updates leave them
  rm_params = nn_unbox(
    jax.jit(lambda: rm.init(jax.random.PRNGKey(1), *M.reward_init_inputs(8))['params'])()
  )
  tx = optim.make(config.train)
  shard = jax.tree.map(lambda _: replicated, trainer.TrainState(0, params, tx.init(params)))
  loss_fn, norms_fn = ppo.make_loss_fn(config, ac)
  update = trainer.make_train_step(loss_fn, tx, shard, mesh, config, norms_fn=norms_fn)
  to_batch = jax.jit(lambda r: ppo.rollout_batch(config, r))
  return config, mesh, ac, rm, params, rm_params, tx, update, to_batch


def _grpo_run(grpo, backend: str):
  """config.train.steps GRPO steps from the fixture's start as ppo.run makes them (rollout ->
  rollout_batch -> two minibatch updates) with config.generate.backend = `backend`; returns the
  per-step rollouts and metrics, the final params, the engine (None for static) and the last
  step's responses drawn from the starting policy."""
  config, mesh, ac, rm, params, rm_params, tx, update, to_batch = grpo
  config = ml_collections.ConfigDict(config.to_dict() | {'generate': dict(backend=backend)})
  ids, mask = gen.left_pad(PROMPTS, 0)
  s = gen.Settings(max_new_tokens=6, strategy='sample', eos_id=EOS, pad_id=0)  # as `rollout`
  engine = ppo.make_engine(config, ac, s, ids.shape[1], len(PROMPTS), params['decoder'])
  sampler = ppo.make_sampler(ac, rm, s, mesh, engine)
  state = trainer.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
  state = jax.tree.map(jnp.copy, state)  # the update donates it
  rollouts, metrics = [], []
  rng = lambda step: jax.random.fold_in(jax.random.PRNGKey(7), step)
  steps = int(config.train.steps)
  for step in range(steps):
    r = sampler(state.params, params['decoder'], rm_params, ids, mask, rng(step))
    batch, stats = to_batch(r)
    state, m = update(state, batch)
    rollouts.append(jax.device_get(r))
    metrics.append(jax.device_get({**m, **stats}))
  stale = sampler(params, params['decoder'], rm_params, ids, mask, rng(steps - 1))['response']
  return rollouts, metrics, jax.device_get(state.params), engine, np.asarray(stale)


@pytest.mark.slow  # two 3-step GRPO runs, each compiling its rollout and update: ~15 s
def test_grpo_through_the_engine_equals_the_static_batch(grpo):
  """config.generate.backend='engine' with a full batch (slots = rows): every step's sampled
  responses, rollout log-probs / scores, losses and the final params are bitwise those of the
  static lm.generate batch, since each row is keyed by its own seed on both backends and the same
  program scores the same tokens. The engine takes each step's policy (the responses change as
  the policy learns) and compiles its decode step once per row count, not per step."""
  from lm.serving import engine as E

  static = _grpo_run(grpo, 'static')
  compiled = E.decode_step._cache_size()
  engine = _grpo_run(grpo, 'engine')
  # one decode program per power-of-two count of rows the engine runs (1, 2, 4), not per step
  assert E.decode_step._cache_size() - compiled <= 3
  assert static[3] is None and engine[3].slots == len(PROMPTS)
  for s_r, e_r in zip(static[0], engine[0]):
    for k in s_r:
      np.testing.assert_array_equal(s_r[k], e_r[k], err_msg=k)
  for s_m, e_m in zip(static[1], engine[1]):
    assert s_m == e_m
  jax.tree.map(np.testing.assert_array_equal, static[2], engine[2])
  assert any((r['resp_mask'] == 0).any() for r in static[0])  # some response ended at EOS
  # The last step's draws from the starting policy differ: the rollouts followed the policy.
  assert (static[4] != static[0][-1]['response']).any()
  np.testing.assert_array_equal(static[4], engine[4])
