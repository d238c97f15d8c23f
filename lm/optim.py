"""AdamW with BERT's decay mask, warmup + decay schedule and global-norm clipping: every job's
optimizer (the `train` block of lm/defaults.py)."""

import flax
import jax
import optax


def schedule(cfg) -> optax.Schedule:
  """Linear warmup to cfg.lr, then 'linear', 'cosine' or 'constant' to cfg.end_lr_fraction*lr."""
  warmup = max(int(cfg.warmup_steps), 0)
  decay_steps = max(int(cfg.steps) - warmup, 1)
  end = cfg.lr * cfg.end_lr_fraction
  decay = {
    'linear': lambda: optax.linear_schedule(cfg.lr, end, decay_steps),
    'cosine': lambda: optax.cosine_decay_schedule(cfg.lr, decay_steps, cfg.end_lr_fraction),
    'constant': lambda: optax.constant_schedule(cfg.lr),
  }
  if cfg.schedule not in decay:
    raise ValueError(f'train.schedule={cfg.schedule!r}: use one of {sorted(decay)}.')
  return optax.join_schedules(
    [optax.linear_schedule(0.0, cfg.lr, warmup), decay[cfg.schedule]()], [warmup]
  )


def decay_mask(params):
  """Weight decay on matrices only: no decay on biases and LayerNorm scales (as in BERT)."""
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict(
    {k: not (k[-1] in ('bias', 'scale') or k[-1].endswith('_bias')) for k in flat}
  )


def updates_per_step(cfg) -> int:
  """Optimizer updates per training step: cfg.epochs_per_batch passes over the step's batch in
  cfg.minibatches parts (PPO reuses each rollout so); 1 for the jobs that set neither."""
  return int(cfg.get('minibatches', 1)) * int(cfg.get('epochs_per_batch', 1))


def make(cfg) -> optax.GradientTransformation:
  lr = schedule(cfg)
  per_step = updates_per_step(cfg)
  if per_step > 1:  # several updates per step (PPO): the schedule still counts steps
    lr = lambda count, base=lr: base(count // per_step)
  tx = optax.adamw(
    lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask
  )
  if cfg.clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
  scale = float(cfg.get('body_lr_scale', 1.0))
  if scale != 1.0:  # fine-tuning: the body's updates (lr and decoupled decay alike) scaled
    tx = optax.chain(
      tx,
      optax.stateless(
        lambda updates, params: {
          k: jax.tree.map(lambda u: u * scale, v) if k == 'body' else v for k, v in updates.items()
        }
      ),
    )
  return tx
