"""RL from a reward model: PPO (policy + value head, GAE), and the critic-free GRPO and RLOO.

Each training step (ppo.py on `lm.loop.fit`) samples one rollout batch from the current policy
with `lm.generate.decode` (jitted, fixed KV cache) or, with config.generate.backend='engine',
the continuous-batching `lm.serving.engine` (the same tokens for the same seeds), scores it with the frozen reward model and
the frozen reference, turns that into advantages (the pure functions below, on [B, N] response
tokens with a mask that ends at the first EOS), then `lm.trainer.make_train_step` makes
train.epochs_per_batch x train.minibatches clipped-surrogate updates on it.

With logp / ref the policy's / reference's log-prob of each sampled response token and s the
reward model's score of the whole sequence:

* 'ppo' (Ziegler et al. 2019, Ouyang et al. 2022): per-token reward
  ``r_t = -kl_coef * (logp_t - ref_t)``, plus s on the last token; GAE(gamma, lam) over the
  value head's estimates; loss = clipped surrogate + vf_coef * clipped value loss.
* 'rloo' (Ahmadian et al. 2024): group_size samples per prompt, sequence reward
  ``R = s - kl_coef * sum_t (logp_t - ref_t)``, advantage = R minus the mean R of the other
  samples of its prompt, on every token; no critic.
* 'grpo' (Shao et al. 2024): advantage = (s - group mean) / (group std + eps) on every token,
  and the KL enters the loss instead of the reward: ``kl_coef * k3``, with
  ``k3 = exp(ref - logp) - (ref - logp) - 1`` per token; no critic.

All three share the clipped surrogate ``max(-A * ratio, -A * clip(ratio, 1 - clip, 1 + clip))``
averaged over response tokens. The model runs deterministically (no dropout) in rollouts and
updates alike, so the first update's ratio is exactly 1.
"""

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lm import checkpoint
from lm import losses
from lm import cli
from lm import generate as gen
from lm import loop
from lm import models as M
from lm import optim
from lm.data import preference
from lm import pretrained
from lm import report
from lm import sharding
from lm import trainer
from lm import defaults
from lm.serving import engine as E
from lm.models import lora

ALGORITHMS = ('ppo', 'grpo', 'rloo')


# ------------------------------------------------------------------ the policy's model


def _response_logits(module, ids, positions, attention_mask, n):
  """Method for a plain Decoder (the reference): logits predicting the last n tokens."""
  return module.logits(module.hidden(ids, positions, attention_mask=attention_mask)[:, -n - 1 : -1])


# ------------------------------------------------------------------ pure math on [B, N]


def response_mask(tokens, eos_id: int):
  """1 for every generated token up to and including the first EOS (whatever follows it,
  pad or not), as float32 [B, N]."""
  is_eos = (tokens == eos_id).astype(jnp.int32)
  before = jnp.cumsum(is_eos, axis=-1) - is_eos  # EOS tokens strictly before this one
  return (before == 0).astype(jnp.float32)


def masked_mean(x, mask, axis=None):
  return jnp.sum(x * mask, axis=axis) / jnp.maximum(jnp.sum(mask, axis=axis), 1.0)


def masked_whiten(x, mask, eps: float = 1e-8):
  """(x - mean) / std over the masked entries (population variance); zero off the mask."""
  mean = masked_mean(x, mask)
  var = masked_mean((x - mean) ** 2, mask)
  return (x - mean) * jax.lax.rsqrt(var + eps) * mask


def entropy(logits):
  """Entropy of each position's next-token distribution [B, N]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def kl_penalised_rewards(score, logp, ref_logp, mask, kl_coef: float):
  """PPO's per-token rewards [B, N]: -kl_coef * (logp - ref) on every response token and the
  reward model's score [B] added on the last one (its EOS, or the N-th token)."""
  r = -kl_coef * (logp - ref_logp) * mask
  last = jnp.maximum(jnp.sum(mask, axis=-1).astype(jnp.int32) - 1, 0)
  return r + jax.nn.one_hot(last, mask.shape[-1]) * score[:, None]


def gae(rewards, values, mask, gamma: float, lam: float):
  """Generalised advantage estimation (Schulman et al. 2016) over each row's response.

  delta_t = r_t + gamma * V_{t+1} - V_t with V = 0 after the last response token;
  A_t = delta_t + gamma * lam * A_{t+1}. Returns (advantages, returns = A + V), zero off
  the mask."""
  nxt = lambda x: jnp.concatenate([x[:, 1:], jnp.zeros_like(x[:, :1])], axis=1)
  next_mask = nxt(mask)
  deltas = rewards + gamma * nxt(values) * next_mask - values

  def back(carry, xs):
    delta, m_next = xs
    a = delta + gamma * lam * m_next * carry
    return a, a

  _, adv = jax.lax.scan(back, jnp.zeros_like(deltas[:, 0]), (deltas.T, next_mask.T), reverse=True)
  adv = adv.T * mask
  return adv, (adv + values) * mask


def group_advantages(rewards, group_size: int, kind: str, eps: float = 1e-6):
  """Critic-free advantages [B] for rows grouped by prompt (group_size consecutive rows):
  'rloo': r_i - mean of the group's other rewards; 'grpo': (r_i - mean) / (std + eps), the
  group's sample std (ddof 1)."""
  g = rewards.reshape(-1, group_size)
  total = jnp.sum(g, axis=1, keepdims=True)
  if kind == 'rloo':
    out = g - (total - g) / (group_size - 1)
  elif kind == 'grpo':
    mean = total / group_size
    std = jnp.sqrt(jnp.sum((g - mean) ** 2, axis=1, keepdims=True) / (group_size - 1))
    out = (g - mean) / (std + eps)
  else:
    raise ValueError(f"kind={kind!r}: use 'rloo' or 'grpo'.")
  return out.reshape(-1)


def clipped_policy_loss(logp, old_logp, advantages, clip: float):
  """Per-token clipped surrogate [B, N] and whether the clip was active (float)."""
  ratio = jnp.exp(logp - old_logp)
  unclipped, clipped = -advantages * ratio, -advantages * jnp.clip(ratio, 1 - clip, 1 + clip)
  return jnp.maximum(unclipped, clipped), (clipped > unclipped).astype(jnp.float32)


def clipped_value_loss(values, old_values, returns, clip: float):
  """Per-token 0.5 * max((V - R)^2, (V_clipped - R)^2), V_clipped within clip of the rollout's."""
  v_clipped = old_values + jnp.clip(values - old_values, -clip, clip)
  return 0.5 * jnp.maximum((values - returns) ** 2, (v_clipped - returns) ** 2)


def k3_kl(logp, ref_logp):
  """Schulman's unbiased, always non-negative per-token KL estimator (GRPO's KL term)."""
  d = ref_logp - logp
  return jnp.exp(d) - d - 1.0


# ------------------------------------------------------------------ rollouts


def check_config(config):
  if config.algorithm not in ALGORITHMS:
    raise ValueError(f'algorithm={config.algorithm!r}: use one of {ALGORITHMS}.')
  g = int(config.group_size)
  if config.algorithm != 'ppo' and g < 2:
    raise ValueError(f'algorithm={config.algorithm!r} needs group_size >= 2 (got {g}).')
  if config.algorithm == 'ppo' and g != 1:
    raise ValueError(f'algorithm=ppo samples one response per prompt: set group_size=1 (got {g}).')
  if int(config.train.batch_size) % g:
    raise ValueError(
      f'train.batch_size={config.train.batch_size} (responses per step) is not a multiple of '
      f'group_size={g}.'
    )


def load_reference(path: str, mesh):
  """The params of config.reference as a plain decoder (a LoRA workdir's adapters merged)."""
  return pretrained.load(path, mesh).body(path, 'reference').params


def load_reward_model(path: str, tok, mesh):
  """(RewardModel, params) of a dpo.py reward-model workdir that shares the policy's tokenizer."""
  if not path or not pretrained.is_workdir(path):
    raise ValueError(
      f'reward_model={path!r}: pass --config.reward_model=DIR, a dpo.py '
      '--config=configs/reward.py workdir.'
    )
  got = pretrained.load(path, mesh)
  model, params, rm_tok = got.model, got.params, got.tokenizer
  if got.head != 'reward':
    raise ValueError(f'{path} is a {got.job!r} workdir, not a reward model (configs/reward.py).')
  probe = 'The assert statement, def f(x): return x'
  if rm_tok.vocab_size != tok.vocab_size or rm_tok.encode(probe) != tok.encode(probe):
    raise ValueError(f'the reward model {path} uses another tokenizer than the policy.')
  return model, params


def settings(config, tok) -> gen.Settings:
  """Rollout sampling: plain ancestral sampling (temperature 1, no top-k / top-p), so the
  sampled tokens' log-probs are the policy's own."""
  return gen.Settings(
    max_new_tokens=int(config.max_new_tokens),
    strategy='sample',
    eos_id=tok.eos_id,
    pad_id=tok.pad_id or 0,
  )


def prompt_arrays(pairs: list[dict], tok, max_prompt_len: int) -> dict:
  """Left-padded ``prompt_ids`` / ``prompt_mask`` [N, max_prompt_len] of the pairs' prompts:
  [bos] + prompt, its last max_prompt_len tokens (as lm.preference encodes the reward model's)."""
  bos = tok.bos_id if tok.bos_id is not None else tok.cls_id
  texts = [p['prompt'] for p in pairs]
  rows = [
    (([bos] if bos is not None else []) + p)[-max_prompt_len:] for p in tok.encode_batch(texts)
  ]
  pad = tok.pad_id if tok.pad_id is not None else 0
  ids = np.full((len(rows), max_prompt_len), pad, np.int32)
  mask = np.zeros((len(rows), max_prompt_len), np.int32)
  for i, r in enumerate(rows):
    ids[i, max_prompt_len - len(r) :], mask[i, max_prompt_len - len(r) :] = r, 1
  return {'prompt_ids': ids, 'prompt_mask': mask}


def right_align(ids, mask):
  """Rolls each left-padded row so its real tokens start at 0 (the reward model reads the last
  real token at sum(mask) - 1 and counts positions from 0, as it was trained)."""
  t = ids.shape[1]
  shift = jnp.argmax(mask, axis=1)  # leading pads
  idx = (jnp.arange(t)[None] + shift[:, None]) % t
  take = lambda x: jnp.take_along_axis(x, idx, axis=1)
  return take(ids), take(mask)


@functools.partial(jax.jit, static_argnums=1)
def row_seeds(rng, rows: int):
  """[rows] int32 seeds, row b's from fold_in(rng, b) alone: the key of a response is
  PRNGKey(seed) on either backend, whatever batch (or engine slot) it is drawn in."""
  bits = lambda b: jax.random.bits(jax.random.fold_in(rng, b), (), jnp.uint32) >> 1
  return jax.vmap(bits)(jnp.arange(rows)).astype(jnp.int32)


def make_engine(
  config, model: M.ActorCritic, settings: gen.Settings, prompt_len: int, slots: int, params
):
  """The rollout engine of config.generate.backend='engine' (None for 'static'): built once per
  run on the starting policy's decoder `params` (placed as they are), its programs compiled once;
  each rollout hands it the current policy's params. Laid out as the static decode
  (`E.like_static_batches`)."""
  g = config.get('generate', {})
  if defaults.backend(g) == 'static':
    return None
  if jax.process_count() > 1:
    raise ValueError('generate.backend=engine runs in one process: use static across hosts.')
  return E.like_static_batches(
    M.Decoder(model.cfg),
    params,
    int(g.get('slots', 0)) or slots,
    prompt_len,
    settings.max_new_tokens,
    settings.eos_id,
    settings.pad_id,
  )


def engine_responses(engine, params, prompt_ids, prompt_mask, seeds, s: gen.Settings):
  """[B, N] responses of the left-padded prompts from `engine` with `params` (the policy's
  decoder), row b seeded with seeds[b]; rows past their EOS hold pad_id, as `gen.decode`'s."""
  ids, mask = np.asarray(prompt_ids), np.asarray(prompt_mask).astype(bool)
  one = lambda seed: E.Sampling(s.max_new_tokens, s.temperature, s.top_p, s.top_k, int(seed))
  got = engine.generate_rows([r[m] for r, m in zip(ids, mask)], map(one, np.asarray(seeds)), params)
  out = np.full((len(ids), s.max_new_tokens), s.pad_id, np.int32)
  for i, toks in enumerate(got):
    out[i, : len(toks)] = toks
  return out


@functools.cache
def _scorer(model: M.ActorCritic, reward_model, settings: gen.Settings, mesh):
  """Jitted (params, ref_params, rm_params, prompt_ids, prompt_mask, response) -> `make_sampler`'s
  dict: the one program both backends' responses go through, kept for the process (one compile
  per models, settings and mesh, however many samplers)."""
  n, policy = settings.max_new_tokens, M.Decoder(model.cfg)  # the reference is one too

  def score(params, ref_params, rm_params, prompt_ids, prompt_mask, response):
    ref_policy = M.Decoder(lora.base_config(model.cfg))  # a reference checkpoint: plain
    if ref_params is None:  # LoRA: the frozen base is the reference, no copy of it is kept
      ref_policy, ref_params = policy, lora.without_adapters(params['decoder'])
    resp_mask = response_mask(response, settings.eos_id)
    ids = jnp.concatenate([prompt_ids, response], axis=1)
    mask = jnp.concatenate([prompt_mask, resp_mask.astype(prompt_mask.dtype)], axis=1)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)  # as generation counted them
    logits, values = model.apply({'params': params}, ids, positions, mask, n)
    ref_logits = ref_policy.apply(
      {'params': ref_params}, ids, positions, mask, n, method=_response_logits
    )
    logp, ref_logp = (
      losses.gather_logps(logits, response),
      losses.gather_logps(ref_logits, response),
    )
    score = reward_model.apply({'params': rm_params}, *right_align(ids, mask))
    return {
      'ids': ids,
      'mask': mask,
      'response': response,
      'resp_mask': resp_mask,
      'logp': logp,
      'ref_logp': ref_logp,
      'values': values,
      'score': score,
      'kl': jnp.sum((logp - ref_logp) * resp_mask, axis=-1),
    }

  return jax.jit(score)


def make_sampler(model: M.ActorCritic, reward_model, settings: gen.Settings, mesh, engine=None):
  """(params, ref_params, rm_params, prompt_ids, prompt_mask, rng) -> per-row dict:
  ``ids`` [B, P + N] (prompt + response), ``mask``, ``response`` [B, N], ``resp_mask``,
  ``logp``, ``ref_logp``, ``values`` [B, N], ``score`` [B] (the reward model's) and ``kl``
  [B] (sum of logp - ref over the response).

  The responses come from `lm.generate.decode` (jitted, one fixed batch) or, given one,
  `engine` (`make_engine`), each row keyed by `row_seeds`; one jitted program then scores them
  on both backends, so the same tokens give bitwise the same rollout."""
  policy, score = M.Decoder(model.cfg), _scorer(model, reward_model, settings, mesh)

  def fn(params, ref_params, rm_params, prompt_ids, prompt_mask, rng):
    seeds = row_seeds(rng, prompt_ids.shape[0])
    if engine is None:
      keys = jax.vmap(jax.random.PRNGKey)(seeds)
      response = gen.decode(policy, params['decoder'], prompt_ids, prompt_mask, keys, settings)
    else:
      response = engine_responses(
        engine, params['decoder'], prompt_ids, prompt_mask, seeds, settings
      )
    return score(params, ref_params, rm_params, prompt_ids, prompt_mask, response)

  return sharding.with_mesh(fn, mesh)


def rollout_batch(config, r: dict):
  """A sampled rollout (`make_sampler`'s dict) -> (the training batch, rollout metrics).

  The batch holds what the loss reads: ``ids``, ``mask``, ``response``, ``resp_mask``, the
  rollout's ``logp`` / ``ref_logp`` / ``values``, and ``advantages`` / ``returns`` [B, N]."""
  m, algo = r['resp_mask'], config.algorithm
  if algo == 'ppo':
    rewards = kl_penalised_rewards(r['score'], r['logp'], r['ref_logp'], m, config.kl_coef)
    adv, returns = gae(rewards, r['values'], m, config.gamma, config.lam)
  else:
    seq = r['score'] - config.kl_coef * r['kl'] if algo == 'rloo' else r['score']
    adv = group_advantages(seq, int(config.group_size), algo)[:, None] * m
    returns = jnp.zeros_like(adv)
  if config.whiten_advantages:
    adv = masked_whiten(adv, m)
  keep = ('ids', 'mask', 'response', 'resp_mask', 'logp', 'ref_logp', 'values')
  batch = {**{k: r[k] for k in keep}, 'advantages': adv, 'returns': returns}
  stats = {
    'score': jnp.mean(r['score']),
    'kl': jnp.mean(r['kl']),
    'reward': jnp.mean(r['score'] - config.kl_coef * r['kl']),
    'response_len': jnp.mean(jnp.sum(m, axis=-1)),
  }
  return batch, stats


def make_loss_fn(config, model: M.ActorCritic) -> tuple[Callable, Callable]:
  """(loss_fn, norms_fn) for `trainer.make_train_step`: the per-token terms summed over
  response tokens and divided by the minibatch's response-token count (norms_fn), so gradient
  accumulation is exact. Metrics: loss, policy_loss, clipfrac, approx_kl (0.5 mean squared log
  ratio to the rollout), entropy, and value_loss (ppo) or kl_k3 (grpo)."""
  algo = config.algorithm

  def loss_fn(params, batch, rng, n_tokens):
    del rng  # deterministic: no dropout in RL updates
    n = batch['response'].shape[1]
    positions = jnp.maximum(jnp.cumsum(batch['mask'], axis=1) - 1, 0)
    logits, values = model.apply({'params': params}, batch['ids'], positions, batch['mask'], n)
    logp = losses.gather_logps(logits, batch['response'])
    pg, clipped = clipped_policy_loss(logp, batch['logp'], batch['advantages'], config.clip)
    ent = entropy(logits)
    terms = {'policy_loss': pg, 'clipfrac': clipped, 'entropy': ent}
    terms['approx_kl'] = 0.5 * (logp - batch['logp']) ** 2
    per = pg - config.ent_coef * ent
    if algo == 'ppo':
      terms['value_loss'] = clipped_value_loss(
        values, batch['values'], batch['returns'], config.value_clip
      )
      per = per + config.vf_coef * terms['value_loss']
    elif algo == 'grpo':
      terms['kl_k3'] = k3_kl(logp, batch['ref_logp'])
      per = per + config.kl_coef * terms['kl_k3']
    terms['loss'] = per
    m = batch['resp_mask']
    aux = {k: jnp.sum(v * m) / n_tokens for k, v in terms.items()}
    return aux['loss'], aux

  def norms_fn(batch):
    return jnp.maximum(jnp.sum(batch['resp_mask']), 1.0)

  return loss_fn, norms_fn


# ------------------------------------------------------------------ held-out figures


def _gather(x):
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  if jax.process_count() > 1:
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(x)


def sample_held_out(sampler, params, frozen, arrays: dict, batch_size: int, mesh, seed: int):
  """{'score', 'kl', 'response_len'} [N] for one sample per row of `arrays` (prompt_ids,
  prompt_mask), the same draws at every call (a fixed seed per batch)."""

  pi, pc = jax.process_index(), jax.process_count()
  n = len(arrays['prompt_ids'])
  out = {'score': [], 'kl': [], 'response_len': []}
  for i, b in enumerate(preference.eval_batches(arrays, batch_size, pi, pc, 'rollouts')):
    ids, mask = sharding.shard_batch((b['prompt_ids'], b['prompt_mask']), mesh)
    r = sampler(params, *frozen, ids, mask, jax.random.fold_in(jax.random.PRNGKey(seed), i))
    out['score'].append(_gather(r['score']))
    out['kl'].append(_gather(r['kl']))
    out['response_len'].append(_gather(jnp.sum(r['resp_mask'], axis=-1)))
  return {k: np.concatenate(v)[:n] for k, v in out.items()}


def held_out_scores(sampler, params, frozen, arrays, batch_size, mesh, seed, kl_coef) -> dict:
  """Held-out means over one sample per prompt: the reward model's score, the KL to the
  reference (per-sequence sum of log-ratios), reward = score - kl_coef * kl, response length."""
  got = sample_held_out(sampler, params, frozen, arrays, batch_size, mesh, seed)
  out = {k: float(np.mean(v)) for k, v in got.items()}
  out['reward'] = out['score'] - kl_coef * out['kl']
  return out


def best_of_n(sampler, params, frozen, arrays, n: int, batch_size, mesh, seed) -> dict:
  """Best-of-n from `params` (the starting policy): n samples per prompt, the reward model keeps
  the best; mean best score for k = 1, 2, 4, ... and n (from the same n draws), and the
  usual KL of best-of-n to its sampler, log n - (n - 1) / n (Stiennon et al. 2020; an upper
  bound, Beirami et al. 2024)."""
  reps = {k: np.repeat(v, n, axis=0) for k, v in arrays.items()}
  score = sample_held_out(sampler, params, frozen, reps, batch_size, mesh, seed)['score']
  score = score.reshape(-1, n)
  ks = sorted({k for k in (2**i for i in range(n.bit_length())) if k <= n} | {n})
  out = {f'best_of_{k}_score': float(np.mean(np.max(score[:, :k], axis=1))) for k in ks}
  out.update(best_of_n=n, best_of_n_kl_bound=float(np.log(n) - (n - 1) / n))
  return out


# ------------------------------------------------------------------ the run (ppo.py)


def run(config, workdir: str) -> dict:
  """ppo.py's whole run; notebooks call it with `get_config()` directly. Returns the last validation figures and, under 'test', the final policy's
  test figures with the best-of-n baseline; the history is in WORKDIR/metrics.jsonl."""
  cli.check_renamed(config)
  workdir = cli.writable_dir(workdir)
  check_config(config)
  if not config.init_checkpoint:
    raise ValueError('pass --config.init_checkpoint=DIR (the starting policy: a decoder workdir).')
  pi, pc = jax.process_index(), jax.process_count()
  mesh = sharding.make_mesh(config.mesh_shape)

  pre = pretrained.load(config.init_checkpoint, mesh).body(config.init_checkpoint, 'ppo.py')
  if pre.kind != 'decoder' or pre.tokenizer is None:
    raise ValueError(f'{config.init_checkpoint} is not a decoder with a tokenizer: PPO needs one.')
  tok, p_len, n_new = pre.tokenizer, config.data.max_prompt_len, config.max_new_tokens
  if p_len + n_new > pre.cfg.max_len:
    raise ValueError(
      f'data.max_prompt_len + max_new_tokens = {p_len + n_new} exceeds the model max_len '
      f'{pre.cfg.max_len}.'
    )
  if tok.eos_id is None:
    raise ValueError(f'the tokenizer of {config.init_checkpoint} has no end-of-text token.')
  rm_model, rm_params = load_reward_model(config.reward_model, tok, mesh)
  if pi == 0:
    tok.save(workdir)
  splits = preference.load_splits(config.data)
  prompts = {s: prompt_arrays(splits[s], tok, p_len) for s in preference.SPLITS}

  tx = optim.make(config.train)
  model = M.ActorCritic(lora.for_job(pre.cfg, config))
  state, state_sh = trainer.create_state_from(
    model, tx, mesh, config.seed, M.policy_init_inputs(p_len + n_new), pre.params, 'decoder'
  )
  # Frozen copies (the state is donated at each step) of what trains, for best-of-n's start;
  # the reference is the start's decoder, or with LoRA the frozen base (`make_sampler`).
  trained, _ = lora.split(state.params)
  start_trained = jax.tree.map(lambda x: x.copy(), trained)
  ref_params = None if lora.has_adapters(state.params) else start_trained['decoder']
  if config.reference:  # a plain model (a LoRA reference merged) as `make_sampler` runs it
    ref_params = load_reference(config.reference, mesh)
  del pre
  frozen = (ref_params, rm_params)
  print(
    f'{config.algorithm}: {trainer.param_count(state.params):,} params, mesh {dict(mesh.shape)}, '
    + ', '.join(f'{len(splits[s])} {s}' for s in preference.SPLITS)
    + ' prompts'
  )

  rollout = settings(config, tok)
  engine = make_engine(
    config, model, rollout, p_len, int(config.train.batch_size), state.params['decoder']
  )
  sampler = make_sampler(model, rm_model, rollout, mesh, engine)
  loss_fn, norms_fn = make_loss_fn(config, model)
  update = trainer.make_train_step(loss_fn, tx, state_sh, mesh, config, norms_fn=norms_fn)
  to_batch = sharding.with_mesh(
    jax.jit(
      lambda r: rollout_batch(config, r), out_shardings=(sharding.batch_sharding(mesh), None)
    ),
    mesh,
  )
  rollout_rng = jax.random.PRNGKey(config.seed + 2)
  group = int(config.group_size)

  def train_step(state, prompts_batch):
    rng = jax.random.fold_in(rollout_rng, state.step)
    r = sampler(state.params, *frozen, *prompts_batch, rng)
    batch, stats = to_batch(r)
    state, metrics = update(state, batch)
    return state, {**metrics, **stats}

  def get_batch(step):
    b = preference.train_batch(
      prompts['train'], step, config.train.batch_size // group, config.seed, pi, pc
    )
    ids, mask = (b[k].repeat(group, axis=0) for k in ('prompt_ids', 'prompt_mask'))
    return sharding.shard_batch((ids, mask), mesh)

  stop = loop.StopFlag().install()

  def held_out(params, split):
    return held_out_scores(
      sampler,
      params,
      frozen,
      prompts[split],
      config.eval_batch_size,
      mesh,
      config.eval_seed,
      config.kl_coef,
    )

  def validate(params):
    result = held_out(params, 'validation')
    if result['kl'] > config.kl_budget:
      print(f'held-out KL {result["kl"]:.3f} exceeds kl_budget={config.kl_budget}: stopping.')
      stop.request(f'kl_budget {config.kl_budget} exceeded (held-out KL {result["kl"]:.3f})')
    return {**result, 'kl_budget': config.kl_budget}

  writer = report.Writer(workdir, int(config.train.steps), config)
  fit = loop.fit(
    state,
    train_step,
    get_batch,
    config,
    workdir,
    writer=writer,
    stop=stop,
    eval_at_start=True,
    evaluate=validate if splits['validation'] else None,
    meta=checkpoint.job_meta('ppo', config, M.record('decoder', model.cfg, 'value')),
    rate=('responses_per_sec', config.train.batch_size),
  )
  if fit.stopped and not fit.stopped.startswith('kl_budget'):
    writer.close()
    return fit.eval
  step = int(fit.state.step)
  start = lora.combine(start_trained, lora.split(fit.state.params)[1])  # the base never changed
  test = {**held_out(fit.state.params, 'test'), 'kl_budget': config.kl_budget}
  n = int(config.best_of_n)
  if n < 0:  # as many samples per prompt as PPO drew per training prompt
    n = max(1, math.ceil(step * config.train.batch_size / len(splits['train'])))
  if n:
    test['start_score'] = held_out(start, 'test')['score']
    test.update(
      best_of_n(
        sampler, start, frozen, prompts['test'], n, config.eval_batch_size, mesh, config.eval_seed
      )
    )
  writer.write(step, test, 'test')
  writer.close()
  return {**fit.eval, 'test': test}


# ------------------------------------------------------------------ evaluating a finished run


def evaluate(
  workdir: str,
  config=None,
  split: str = 'test',
  which: str = 'best',
  max_examples: int = 0,
  num_batches=None,
  mesh=None,
):
  """(figures, None) of a ppo.py workdir's policy on `split` ('test' or 'validation') of its
  config's prompts, as ppo.py logs them (`_held_out_figures`)."""
  del which, max_examples, num_batches  # the latest policy, every prompt of the split
  if split not in ('test', 'validation'):
    raise ValueError(f"split={split!r}: evaluate 'test' or 'validation'.")
  config = config or pretrained.saved_config(workdir)
  mesh = mesh or sharding.config_mesh(config)
  got = pretrained.load(workdir, mesh)
  pairs = preference.load_splits(config.data)[split]
  head = {'job': 'ppo', 'split': split, 'step': got.step, 'prompts': len(pairs)}
  return head | _held_out_figures(config, got.model, got.params, got.tokenizer, pairs, mesh), None


def _held_out_figures(config, model, params, tok, pairs, mesh) -> dict:
  """A py policy on held-out prompts as py scores them (one sample per prompt, the run's
  eval_seed, its reward model and reference): mean score, KL, reward, response length, and the
  starting policy's mean score on the same draws' seeds (`start_score`)."""
  if lora.has_adapters(params):  # the start and the reference are the frozen base
    start = lora.without_adapters(params)
    ref = load_reference(config.reference, mesh) if config.reference else None
  else:
    start = pretrained.load(config.init_checkpoint, mesh).params
    ref = load_reference(config.reference, mesh) if config.reference else start
  rm_model, rm_params = load_reward_model(config.reward_model, tok, mesh)
  prompts = prompt_arrays(pairs, tok, config.data.max_prompt_len)
  ac, rollout = M.ActorCritic(model.cfg), settings(config, tok)
  p_len, size = config.data.max_prompt_len, config.eval_batch_size
  engine = make_engine(config, ac, rollout, p_len, size, params)
  sampler = make_sampler(ac, rm_model, rollout, mesh, engine)
  head = {'kernel': jnp.zeros((model.cfg.hidden_size, 1)), 'bias': jnp.zeros((1,))}  # unused

  def run(decoder_params):
    return held_out_scores(
      sampler,
      {'decoder': decoder_params, 'value_head': head},
      (ref, rm_params),
      prompts,
      config.eval_batch_size,
      mesh,
      config.eval_seed,
      config.kl_coef,
    )

  return {**run(params), 'start_score': run(start)['score']}
