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

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from lm import checkpoint
from lm import losses
from lm import cli
from lm import loop
from lm import models as M
from lm import optim
from lm.data import preference
from lm import pretrained
from lm import report
from lm import sharding
from lm import trainer
from lm.models import lora
from lm.data import sources

LOSSES = ('dpo', 'ipo')


# ------------------------------------------------------------------ log-probs and losses


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
  logps = losses.sequence_logps(
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
  """(params, batch, deterministic, rngs) -> metrics dict with 'loss', for config.objective."""
  if config.objective == 'reward':
    return lambda p, b, d, r=None: _reward_terms(model, p, b, d, r)
  if config.objective == 'dpo':
    return lambda p, b, d, r=None: _dpo_terms(config, model, p, b, d, r)
  raise ValueError(f"objective={config.objective!r}: use 'dpo' or 'reward'.")


def make_train_step(config, model, tx, state_shardings, mesh) -> Callable:
  """trainer.make_train_step on config.objective's loss; the metrics are its terms."""
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


def preference_metrics(eval_step, params, batches, stop=None) -> dict:
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
    lp = losses.sequence_logps(
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
  for batch in preference.eval_batches(arrays, batch_size, pi, pc, 'reference log-probs'):
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
  config,
  model,
  params_shardings,
  mesh,
  datasets: dict,
  workdir: str,
  stop=None,
  loaded=None,
  base_params=None,
) -> bool:
  """Adds ref_chosen / ref_rejected to each of `datasets` ({name: arrays}) from the frozen
  reference (config.reference, else config.init_checkpoint: `loaded` when the caller holds it;
  with LoRA, `base_params`: the policy with its adapters zeroed, which is the frozen base with
  no second copy of it), read from the workdir's cache when there. False when `stop`
  interrupted it."""
  source = config.reference or config.init_checkpoint
  ref = loaded if loaded is not None and not config.reference else pretrained.load(source, mesh)
  ref_id = f'{os.path.abspath(source)}@{ref.step}'
  ref_model, ref_sh = model, params_shardings
  if base_params is not None and not config.reference:
    ref_params, ref_id = base_params, f'{ref_id} base quant={model.cfg.quant}'
  elif model.cfg.lora_rank:  # a reference of its own beside a LoRA policy: its own model
    ref_model, ref_params = ref.model, ref.params
    ref_sh = jax.tree.map(lambda x: x.sharding, ref_params)
  else:
    ref_params = jax.device_put(ref.params, params_shardings)
  logps_fn = make_logps_fn(ref_model, ref_sh, mesh)
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


# ------------------------------------------------------------------ the run (dpo.py)


def run(config, workdir: str) -> dict:
  """dpo.py's whole run (a reward model or DPO); notebooks call it with `get_config()` directly. Returns the last validation
  metrics and, under 'test', the final params' test metrics; the history is in
  WORKDIR/metrics.jsonl."""
  cli.check_renamed(config, 'dpo.py')
  workdir = cli.writable_dir(workdir)
  if config.objective not in ('reward', 'dpo'):
    raise ValueError(f"objective={config.objective!r}: use 'reward' (configs/reward.py) or 'dpo'.")
  if config.objective == 'dpo' and config.loss not in LOSSES:
    raise ValueError(f'loss={config.loss!r}: use one of {LOSSES}.')
  if not config.init_checkpoint:
    raise ValueError(
      'pass --config.init_checkpoint=DIR (a train.py --workdir or a HF GPT-2 directory).'
    )
  pi, pc = jax.process_index(), jax.process_count()
  mesh = sharding.make_mesh(config.mesh_shape)

  # The pretrained decoder and its tokenizer; preference pairs tokenized with it.
  pre = pretrained.load(config.init_checkpoint, mesh).body(config.init_checkpoint, 'dpo.py')
  if pre.kind != 'decoder' or pre.tokenizer is None:
    raise ValueError(
      f'{config.init_checkpoint} is a {pre.kind} without/with tokenizer '
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
  cfg = lora.for_job(pre.cfg, config)
  if config.objective == 'reward':
    model = M.RewardModel(cfg)
    state, state_sh = create_state(
      model, tx, mesh, config.seed, M.reward_init_inputs(seq_len), pre.params, 'decoder'
    )
  else:
    model = M.body(pre.kind, cfg)
    state, state_sh = create_state(
      model, tx, mesh, config.seed, M.policy_init_inputs(seq_len), pre.params
    )
  print(
    f'{config.objective}: {trainer.param_count(state.params):,} params, mesh {dict(mesh.shape)}, '
    f'{len(pairs["train"])} training / {len(pairs["validation"])} validation / '
    f'{len(pairs["test"])} test pairs'
  )
  stop = loop.StopFlag().install()

  if config.objective == 'dpo':  # the frozen reference, run once over every pair, then dropped
    data = {'train': train_data, 'validation': eval_data, 'test': test_data}
    data = {name: d for name, d in data.items() if name == 'train' or pairs[name]}
    base = lora.without_adapters(state.params) if lora.has_adapters(state.params) else None
    if not attach_reference_logps(
      config, model, state_sh.params, mesh, data, workdir, stop, loaded=pre, base_params=base
    ):
      print(f'{stop.signal}: stopped computing reference log-probs, exiting.')
      return
  del pre

  train_step = make_train_step(config, model, tx, state_sh, mesh)
  eval_step = make_eval_step(config, model, state_sh.params, mesh)

  def score(params, data):
    batches = preference.eval_batches(data, config.eval_batch_size, pi, pc)
    return preference_metrics(
      eval_step, params, (sharding.shard_batch(b, mesh) for b in batches), stop
    )

  writer = report.Writer(workdir, int(config.train.steps), config)
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
    meta=checkpoint.job_meta(
      'dpo',
      config,
      M.record('decoder', model.cfg, 'reward' if config.objective == 'reward' else None),
    ),
    rate=('pairs_per_sec', config.train.batch_size),
  )
  test = {} if fit.stopped or not pairs['test'] else score(fit.state.params, test_data)
  if test:
    writer.write(int(fit.state.step), test, 'test')
  writer.close()
  return {**fit.eval, 'test': test} if test else fit.eval


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
  """The held-out preference metrics dpo.py logs (reward model: pairwise accuracy and margin;
  DPO: implicit-reward accuracy and margins against the frozen reference) for the latest
  checkpoint of a dpo.py workdir, on `split` ('test' or 'validation') of its config's pairs;
  (results, None)."""
  if split not in ('test', 'validation'):
    raise ValueError(f"split={split!r}: evaluate 'test' or 'validation'.")
  del which, max_examples, num_batches  # the latest params, every pair of the split
  config = config or pretrained.saved_config(workdir)
  mesh = mesh or sharding.config_mesh(config)
  got = pretrained.load(workdir, mesh)
  objective, model, params, tok = config.objective, got.model, got.params, got.tokenizer
  pairs = preference.load_splits(config.data)[split]
  data = preference.encode_pairs(pairs, tok, config.data.seq_len, config.data.max_prompt_len)
  params_sh = jax.tree.map(lambda x: x.sharding, params)
  base = lora.without_adapters(params) if lora.has_adapters(params) else None
  if objective == 'dpo' and not attach_reference_logps(
    config, model, params_sh, mesh, {split: data}, workdir, base_params=base
  ):
    return {}, None
  eval_step = make_eval_step(config, model, params_sh, mesh)
  batches = (
    sharding.shard_batch(b, mesh)
    for b in preference.eval_batches(
      data, config.eval_batch_size, jax.process_index(), jax.process_count()
    )
  )
  return {
    'job': 'dpo',
    'objective': objective,
    'split': split,
    'step': got.step,
    'pairs': len(pairs),
    **preference_metrics(eval_step, params, batches),
  }, None
