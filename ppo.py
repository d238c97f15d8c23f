r"""RL fine-tuning of a decoder against a trained reward model: PPO, GRPO or RLOO.

  python ppo.py --config=configs/ppo.py --workdir=/tmp/lm_ppo --config.pretrained=/tmp/lm_gpt \
      --config.reward_model=/tmp/lm_rm [--config.algorithm=rloo --config.group_size=4]

Each step of the shared loop samples train.batch_size responses to training prompts from the
current policy (jitted KV-cache decoding), scores them with the frozen reward model and the
frozen reference, and makes train.epochs_per_batch x train.minibatches updates on that rollout
(lm/ppo.py). Held-out figures (one sample per prompt, fixed draws): the reward model's mean
score and the mean per-sequence KL to the reference, on validation prompts at step 0, every
eval_every steps and at the end, and on test prompts once at the end, beside best-of-n sampling
from the starting policy (`test/best_of_*`). Training stops, saving first, at the first
evaluation whose KL exceeds kl_budget. Resumes from the latest checkpoint in --workdir.
"""

import dataclasses
import math

from absl import flags
import jax
from ml_collections import config_flags

from lm import cli
from lm import loop
from lm import optim
from lm import ppo
from lm import preference
from lm import pretrained
from lm import report
from lm import rlhf
from lm import sharding
from lm import trainer

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'configs/ppo.py.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, metrics.jsonl, TensorBoard.')
flags.mark_flags_as_required(['config', 'workdir'])


def train(config, workdir: str) -> dict:
  """The whole run. Returns the last validation figures and, under 'test', the final policy's
  test figures with the best-of-n baseline; the history is in WORKDIR/metrics.jsonl."""
  workdir = cli.writable_dir(workdir)
  ppo.check_config(config)
  if not config.pretrained:
    raise ValueError('pass --config.pretrained=DIR (the starting policy: a decoder workdir).')
  pi, pc = jax.process_index(), jax.process_count()
  mesh = sharding.make_mesh(config.mesh_shape)

  pre = pretrained.load(config.pretrained, mesh)
  if pre.kind != 'decoder' or pre.tokenizer is None:
    raise ValueError(f'{config.pretrained} is not a decoder with a tokenizer: PPO needs one.')
  tok, p_len, n_new = pre.tokenizer, config.data.max_prompt_len, config.max_new_tokens
  if p_len + n_new > pre.cfg.max_len:
    raise ValueError(
      f'data.max_prompt_len + max_new_tokens = {p_len + n_new} exceeds the model max_len '
      f'{pre.cfg.max_len}.'
    )
  if tok.eos_id is None:
    raise ValueError(f'the tokenizer of {config.pretrained} has no end-of-text token.')
  rm_model, rm_params = ppo.load_reward_model(config.reward_model, tok, mesh)
  if pi == 0:
    tok.save(workdir)
  splits = preference.load_splits(config.data)
  prompts = {s: ppo.prompt_arrays(splits[s], tok, p_len) for s in preference.SPLITS}

  tx = optim.make(config.train)
  model = ppo.ActorCritic(pre.cfg)
  state, state_sh = rlhf.create_state(
    model, tx, mesh, config.seed, ppo.init_inputs(p_len + n_new), pre.params, 'decoder'
  )
  # Frozen copies (the state is donated at each step): the start for best-of-n, the reference.
  start = jax.tree.map(lambda x: x.copy(), state.params)
  ref_params = start['decoder']
  if config.reference:
    ref_params = jax.device_put(
      pretrained.load(config.reference, mesh).params, state_sh.params['decoder']
    )
  del pre
  frozen = (ref_params, rm_params)
  print(
    f'{config.algorithm}: {trainer.param_count(state.params):,} params, mesh {dict(mesh.shape)}, '
    + ', '.join(f'{len(splits[s])} {s}' for s in preference.SPLITS)
    + ' prompts'
  )

  sampler = ppo.make_sampler(model, rm_model, ppo.settings(config, tok), mesh)
  loss_fn, norms_fn = ppo.make_loss_fn(config, model)
  update = trainer.make_train_step(loss_fn, tx, state_sh, mesh, config, norms_fn=norms_fn)
  to_batch = sharding.with_mesh(
    jax.jit(
      lambda r: ppo.rollout_batch(config, r), out_shardings=(sharding.batch_sharding(mesh), None)
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
    return ppo.evaluate(
      sampler,
      params,
      frozen,
      prompts[split],
      config.eval_batch_size,
      mesh,
      config.eval_seed,
      config.kl_coef,
    )

  def evaluate(params):
    result = held_out(params, 'validation')
    if result['kl'] > config.kl_budget:
      print(f'held-out KL {result["kl"]:.3f} exceeds kl_budget={config.kl_budget}: stopping.')
      stop.request(f'kl_budget {config.kl_budget} exceeded (held-out KL {result["kl"]:.3f})')
    return {**result, 'kl_budget': config.kl_budget}

  writer = report.Writer(workdir, int(config.train.steps))
  fit = loop.fit(
    state,
    train_step,
    get_batch,
    config,
    workdir,
    writer=writer,
    stop=stop,
    eval_at_start=True,
    evaluate=evaluate if splits['validation'] else None,
    meta=lambda step: {
      'task': 'ppo',
      'config': config.to_json(),
      'model': dataclasses.asdict(model.cfg),
      'data_position': step,
    },
    rate=('responses_per_sec', config.train.batch_size),
  )
  if fit.stopped and not fit.stopped.startswith('kl_budget'):
    writer.close()
    return fit.eval
  step = int(fit.state.step)
  test = {**held_out(fit.state.params, 'test'), 'kl_budget': config.kl_budget}
  n = int(config.best_of_n)
  if n < 0:  # as many samples per prompt as PPO drew per training prompt
    n = max(1, math.ceil(step * config.train.batch_size / len(splits['train'])))
  if n:
    test['start_score'] = held_out(start, 'test')['score']
    test.update(
      ppo.best_of_n(
        sampler, start, frozen, prompts['test'], n, config.eval_batch_size, mesh, config.eval_seed
      )
    )
  writer.write(step, test, 'test')
  writer.close()
  return {**fit.eval, 'test': test}


if __name__ == '__main__':
  cli.run_job(train)
