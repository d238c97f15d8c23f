"""Fine-tuning from preferences: a Bradley-Terry reward model, and DPO / IPO.

Batches come from :mod:`lm.preference`: ``{chosen,rejected}_{ids,mask,resp}`` [B, T] and
``weight`` [B] (0 for eval padding rows); DPO batches also carry the reference model's
sequence log-probs ``ref_chosen`` / ``ref_rejected`` [B], computed once by
:func:`reference_logps` and cached in the workdir.

Losses, with h the DPO log-ratio margin
``h = (log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x))``:

* DPO (Rafailov et al. 2023): ``-log sigmoid(beta * h)``;
* IPO (Azar et al. 2023): ``(h - 1 / (2 beta))^2``;
* reward model: ``-log sigmoid(r_c - r_r)``;

and the implicit reward of a response is ``beta * (log pi - log ref)``.
"""

import os
from typing import Callable

import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from lm import checkpoint
from lm import cli
from lm import loop
from lm import model as M
from lm import optim
from lm import preference
from lm import pretrained
from lm import report
from lm import sharding
from lm import trainer
from lm.data import sources

LOSSES = ('dpo', 'ipo')


# ------------------------------------------------------------------ log-probs and losses


def token_logps(logits, ids):
  """log p(ids[t] | ids[<t]) for t >= 1, at [B, T-1]: logits at t-1 predict token t."""
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]


def sequence_logps(model, params, ids, mask, resp, deterministic=True, rngs=None):
  """Sum of the response tokens' log-probs [B]; prompt and padding tokens do not count."""
  logits = model.apply(
    {'params': params}, ids, attention_mask=mask, deterministic=deterministic, rngs=rngs
  )
  return jnp.sum(token_logps(logits, ids) * resp[:, 1:].astype(jnp.float32), axis=-1)


def preference_loss(pi_c, pi_r, ref_c, ref_r, beta: float, loss: str = 'dpo'):
  """Per-pair loss [B] and the implicit rewards (beta * (pi - ref)) of chosen and rejected."""
  h = (pi_c - ref_c) - (pi_r - ref_r)
  if loss == 'dpo':
    per = -jax.nn.log_sigmoid(beta * h)
  elif loss == 'ipo':
    per = (h - 1.0 / (2.0 * beta)) ** 2
  else:
    raise ValueError(f'loss={loss!r}: use one of {LOSSES}.')
  return per, beta * (pi_c - ref_c), beta * (pi_r - ref_r)


def bradley_terry_loss(r_c, r_r):
  """-log sigmoid(r_c - r_r) per pair: the chosen response should score higher."""
  return -jax.nn.log_sigmoid(r_c - r_r)


def _wmean(x, w):
  return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


def _both(batch, key):
  """Chosen rows then rejected rows: one forward pass over 2B sequences."""
  return jnp.concatenate([batch[f'chosen_{key}'], batch[f'rejected_{key}']], axis=0)


# ------------------------------------------------------------------ reward model


class RewardModel(nn.Module):
  """The decoder with a scalar head on the hidden state of each row's last real token."""

  cfg: M.ModelConfig

  def setup(self):
    self.decoder = M.Decoder(self.cfg)
    self.head = nn.Dense(
      1,
      dtype=self.cfg.dtype,
      param_dtype=self.cfg.param_dtype,
      kernel_init=nn.with_logical_partitioning(
        nn.initializers.normal(self.cfg.initializer_range), ('embed', 'classes')
      ),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ('classes',)),
    )

  def __call__(self, input_ids, attention_mask=None, deterministic=True):
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    h = self.decoder.hidden(input_ids, attention_mask=attention_mask, deterministic=deterministic)
    last = jnp.maximum(jnp.sum(attention_mask, axis=-1) - 1, 0)
    h_last = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
    return self.head(h_last)[:, 0].astype(jnp.float32)


def reward_init_inputs(seq_len: int):
  ids = jnp.zeros((1, seq_len), jnp.int32)
  return (ids, jnp.ones_like(ids))


def policy_init_inputs(seq_len: int):
  return (jnp.zeros((1, seq_len), jnp.int32),)


create_state = trainer.create_state_from  # a sharded TrainState starting from pretrained params


# ------------------------------------------------------------------ steps


def _reward_terms(model, params, batch, deterministic, rngs=None):
  b = batch['chosen_ids'].shape[0]
  r = model.apply(
    {'params': params}, _both(batch, 'ids'), _both(batch, 'mask'), deterministic, rngs=rngs
  )
  r_c, r_r = r[:b], r[b:]
  w = batch['weight']
  return {
    'loss': _wmean(bradley_terry_loss(r_c, r_r), w),
    'accuracy': _wmean((r_c > r_r).astype(jnp.float32), w),
    'margin': _wmean(r_c - r_r, w),
    'reward_chosen': _wmean(r_c, w),
    'reward_rejected': _wmean(r_r, w),
  }


def _dpo_terms(config, model, params, batch, deterministic, rngs=None):
  b = batch['chosen_ids'].shape[0]
  logps = sequence_logps(
    model,
    params,
    _both(batch, 'ids'),
    _both(batch, 'mask'),
    _both(batch, 'resp'),
    deterministic,
    rngs,
  )
  pi_c, pi_r = logps[:b], logps[b:]
  ref_c, ref_r = batch['ref_chosen'], batch['ref_rejected']
  per, rew_c, rew_r = preference_loss(pi_c, pi_r, ref_c, ref_r, config.beta, config.loss)
  w = batch['weight']
  return {
    'loss': _wmean(per, w),
    'reward_accuracy': _wmean((rew_c > rew_r).astype(jnp.float32), w),
    'reward_margin': _wmean(rew_c - rew_r, w),
    'reward_chosen': _wmean(rew_c, w),
    'reward_rejected': _wmean(rew_r, w),
    'logp_chosen': _wmean(pi_c, w),
    'logp_rejected': _wmean(pi_r, w),
    'logp_margin': _wmean(pi_c - pi_r, w),  # the policy's own chosen-vs-rejected margin
    'ref_logp_margin': _wmean(ref_c - ref_r, w),
    'policy_accuracy': _wmean((pi_c > pi_r).astype(jnp.float32), w),
  }


def terms_fn(config, model) -> Callable:
  """(params, batch, deterministic, rngs) -> metrics dict with 'loss', for config.task."""
  if config.task == 'reward':
    return lambda p, b, d, r=None: _reward_terms(model, p, b, d, r)
  if config.task == 'dpo':
    return lambda p, b, d, r=None: _dpo_terms(config, model, p, b, d, r)
  raise ValueError(f"task={config.task!r}: use 'dpo' or 'reward'.")


def make_train_step(config, model, tx, state_shardings, mesh) -> Callable:
  """trainer.make_train_step on config.task's loss; the metrics are its terms."""
  terms = terms_fn(config, model)

  def loss_fn(params, batch, rng):
    m = terms(params, batch, False, {'dropout': rng})
    return m['loss'], m

  return trainer.make_train_step(loss_fn, tx, state_shardings, mesh, config)


def make_eval_step(config, model, params_shardings, mesh) -> Callable:
  """(params, batch) -> (metric means * weight, weight): summed over batches by `evaluate`."""
  terms = terms_fn(config, model)

  def eval_fn(params, batch):
    w = jnp.sum(batch['weight'])
    return jax.tree.map(lambda x: x * w, terms(params, batch, True)), w

  return trainer.jit_eval(eval_fn, params_shardings, mesh)


def evaluate(eval_step, params, batches, stop=None) -> dict:
  """Means over every held-out pair (each batch's means weighted by its real rows)."""
  return trainer.evaluate(
    eval_step,
    params,
    batches,
    lambda s, w: {k: v / w for k, v in s.items()} if float(w) else {},
    stop,
  )


# ------------------------------------------------------------------ reference log-probs


def make_logps_fn(model, params_shardings, mesh) -> Callable:
  """(params, batch) -> (chosen logps [B], rejected logps [B]), jitted and sharded."""

  def fn(params, batch):
    b = batch['chosen_ids'].shape[0]
    lp = sequence_logps(
      model, params, _both(batch, 'ids'), _both(batch, 'mask'), _both(batch, 'resp')
    )
    return lp[:b], lp[b:]

  jitted = jax.jit(fn, in_shardings=(params_shardings, sharding.batch_sharding(mesh)))
  return sharding.with_mesh(jitted, mesh)


def reference_logps(
  logps_fn,
  params,
  arrays: dict,
  batch_size: int,
  mesh,
  cache_dir: str,
  reference_id: str,
  stop=None,
):
  """{'ref_chosen', 'ref_rejected'} [N] for every row of `arrays`, computed once.

  Cached as ``cache_dir/reference_logps-<hash>.npz``, the hash covering the token arrays
  and `reference_id` (which model and step): a rerun, a resume or another run on the same
  data and reference reads the file instead of running the reference model. Returns
  (dict, path, computed: bool); None for the dict when `stop` interrupted it.
  """
  key = preference.fingerprint(arrays, reference_id)
  path = os.path.join(cache_dir, f'reference_logps-{key}.npz')
  if os.path.exists(path):
    with np.load(path) as f:
      return {k: f[k] for k in ('ref_chosen', 'ref_rejected')}, path, False
  pi, pc = jax.process_index(), jax.process_count()
  chosen, rejected = [], []
  for batch in preference.eval_batches(arrays, batch_size, pi, pc):
    if stop is not None and stop.requested:
      return None, path, True
    batch.pop('weight')
    c, r = logps_fn(params, sharding.shard_batch(batch, mesh))
    if pc > 1:
      c, r = multihost_utils.process_allgather((c, r), tiled=True)
    chosen.append(np.asarray(c))
    rejected.append(np.asarray(r))
  n = preference.num_rows(arrays)
  out = {
    'ref_chosen': np.concatenate(chosen)[:n].astype(np.float32),
    'ref_rejected': np.concatenate(rejected)[:n].astype(np.float32),
  }
  if pi == 0:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + '.tmp.npz'
    np.savez(tmp, **out)
    os.replace(tmp, path)  # atomic: a killed run never leaves half a cache
  return out, path, True


def attach_reference_logps(
  config, model, params_shardings, mesh, datasets: dict, workdir: str, stop=None, loaded=None
) -> bool:
  """Adds ref_chosen / ref_rejected to each of `datasets` ({name: arrays}) from the frozen
  reference (config.reference, else config.pretrained: `loaded` when the caller holds it),
  read from the workdir's cache when there. False when `stop` interrupted it."""
  from lm import pretrained  # pylint: disable=g-import-not-at-top

  source = config.reference or config.pretrained
  ref = loaded if loaded is not None and not config.reference else pretrained.load(source, mesh)
  ref_params = jax.device_put(ref.params, params_shardings)
  ref_id = f'{os.path.abspath(source)}@{ref.step}'
  logps_fn = make_logps_fn(model, params_shardings, mesh)
  for name, data in datasets.items():
    got, path, computed = reference_logps(
      logps_fn, ref_params, data, config.eval_batch_size, mesh, workdir, ref_id, stop
    )
    if got is None:
      return False
    data.update(got)
    print(
      f'reference log-probs ({name}): {"computed, saved to" if computed else "read from"} {path}'
    )
  return True


# ------------------------------------------------------------------ loading a fine-tuned run


def load_finetuned(workdir: str, mesh=None, step=None):
  """(task, model, params, tokenizer, step) of a dpo.py or ppo.py workdir: the DPO or PPO
  policy (a `lm.model.Decoder`, usable with `lm.generate`; a PPO run's value head is dropped)
  or the reward model (`RewardModel`)."""
  import json  # pylint: disable=g-import-not-at-top
  from lm.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top

  mesh = mesh or sharding.make_mesh((-1, 1, 1))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), every=1, read_only=True)
  meta, step = ckpt.read_meta(step)
  config = ml_collections.ConfigDict(json.loads(meta['config']))
  cfg = M.ModelConfig.from_dict(meta['model'])
  if meta['task'] == 'reward':
    model, inputs = RewardModel(cfg), reward_init_inputs(config.data.seq_len)
  elif meta['task'] == 'ppo':  # ppo.py: the policy is the actor-critic's decoder
    from lm import ppo  # pylint: disable=g-import-not-at-top

    model = ppo.ActorCritic(cfg)
    inputs = ppo.init_inputs(config.data.max_prompt_len + config.max_new_tokens)
  else:
    model, inputs = M.Decoder(cfg), policy_init_inputs(config.data.seq_len)
  target = trainer.abstract_state(model, optim.make(config.train), mesh, inputs)
  state, _, got = ckpt.restore(target, step)
  tok = tokenizer_lib.Tokenizer.load(os.path.join(workdir, 'tokenizer.json'))
  params = state.params
  if meta['task'] == 'ppo':
    model, params = M.Decoder(cfg), params['decoder']
  return meta['task'], model, params, tok, got


# ------------------------------------------------------------------ the run (dpo.py)


def run(config, workdir: str) -> dict:
  """dpo.py's whole run (a reward model or DPO); notebooks call it with `get_config()` directly. Returns the last validation
  metrics and, under 'test', the final params' test metrics; the history is in
  WORKDIR/metrics.jsonl."""
  workdir = cli.writable_dir(workdir)
  if config.task not in ('reward', 'dpo'):
    raise ValueError(f"task={config.task!r}: use 'reward' (configs/reward.py) or 'dpo'.")
  if config.task == 'dpo' and config.loss not in LOSSES:
    raise ValueError(f'loss={config.loss!r}: use one of {LOSSES}.')
  if not config.pretrained:
    raise ValueError('pass --config.pretrained=DIR (a train.py --workdir or a HF GPT-2 directory).')
  pi, pc = jax.process_index(), jax.process_count()
  mesh = sharding.make_mesh(config.mesh_shape)

  # The pretrained decoder and its tokenizer; preference pairs tokenized with it.
  pre = pretrained.load(config.pretrained, mesh)
  if pre.kind != 'decoder' or pre.tokenizer is None:
    raise ValueError(
      f'{config.pretrained} is a {pre.kind} without/with tokenizer '
      f'{pre.tokenizer}: DPO and reward models need a decoder and its tokenizer.'
    )
  tok, seq_len = pre.tokenizer, config.data.seq_len
  if seq_len > pre.cfg.max_len:
    raise ValueError(f'data.seq_len={seq_len} exceeds the model max_len={pre.cfg.max_len}.')
  if pi == 0:
    tok.save(workdir)
  pairs = preference.load_splits(config.data)
  if not pairs['validation']:
    print(sources.NO_EVAL)
  train_data, eval_data, test_data = (
    preference.encode_pairs(pairs[s], tok, seq_len, config.data.max_prompt_len)
    for s in preference.SPLITS
  )

  # Model and state: the reward model's decoder, or the whole policy, starts as `pre`.
  tx = optim.make(config.train)
  if config.task == 'reward':
    model = RewardModel(pre.cfg)
    state, state_sh = create_state(
      model, tx, mesh, config.seed, reward_init_inputs(seq_len), pre.params, 'decoder'
    )
  else:
    model = pre.model
    state, state_sh = create_state(
      model, tx, mesh, config.seed, policy_init_inputs(seq_len), pre.params
    )
  print(
    f'{config.task}: {trainer.param_count(state.params):,} params, mesh {dict(mesh.shape)}, '
    f'{len(pairs["train"])} training / {len(pairs["validation"])} validation / '
    f'{len(pairs["test"])} test pairs'
  )
  stop = loop.StopFlag().install()

  if config.task == 'dpo':  # the frozen reference, run once over every pair, then dropped
    data = {'train': train_data, 'validation': eval_data, 'test': test_data}
    data = {name: d for name, d in data.items() if name == 'train' or pairs[name]}
    if not attach_reference_logps(
      config, model, state_sh.params, mesh, data, workdir, stop, loaded=pre
    ):
      print(f'{stop.signal}: stopped computing reference log-probs, exiting.')
      return
  del pre

  train_step = make_train_step(config, model, tx, state_sh, mesh)
  eval_step = make_eval_step(config, model, state_sh.params, mesh)

  def score(params, data):
    batches = preference.eval_batches(data, config.eval_batch_size, pi, pc)
    return evaluate(eval_step, params, (sharding.shard_batch(b, mesh) for b in batches), stop)

  writer = report.Writer(workdir, int(config.train.steps))
  fit = loop.fit(
    state,
    train_step,
    lambda step: sharding.shard_batch(
      preference.train_batch(train_data, step, config.train.batch_size, config.seed, pi, pc), mesh
    ),
    config,
    workdir,
    writer=writer,
    stop=stop,
    eval_at_start=True,
    evaluate=(lambda params: score(params, eval_data)) if pairs['validation'] else None,
    meta=checkpoint.job_meta(config, model.cfg, config.task),
    rate=('pairs_per_sec', config.train.batch_size),
  )
  test = {} if fit.stopped or not pairs['test'] else score(fit.state.params, test_data)
  if test:
    writer.write(int(fit.state.step), test, 'test')
  writer.close()
  return {**fit.eval, 'test': test} if test else fit.eval
