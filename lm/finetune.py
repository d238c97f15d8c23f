"""Fine-tuning a pretrained body with a new task head, and evaluating the result.

The body comes from `lm.pretrained.load` (our train.py workdir or an HF BERT/GPT-2 directory),
restored onto this run's mesh whatever mesh it was saved from. `merge_body` puts it into the
freshly initialised task model after checking every body parameter's name and shape: a missing,
unexpected or reshaped tensor is an error, never a partial load. Only the pretraining heads
(MLM transform, NSP) may be left behind.

Training runs the shared loop (`lm.loop.fit`): step-indexed batches, periodic checkpoints in
`workdir/checkpoints`, the best params by the validation metric in `workdir/best` with early
stopping (`loop.Best`), SIGTERM/SIGINT save and exit at the next step boundary, a non-finite
loss stops the run and is never checkpointed. `workdir/finetune.json` records what eval.py
needs to rebuild the model (task, labels, body kind and config); tokenizer.json sits beside it.
The test split is never read here: eval.py reports it for the params chosen on validation.
"""

import dataclasses
import json
import os

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lm import checkpoint
from lm import distributed
from lm import evaluation
from lm import loop
from lm import model as M
from lm import optim
from lm import pretrained
from lm import sharding
from lm import tasks
from lm import trainer
from lm.data import sources
from lm.tasks import data as data_lib
from lm.tasks import model as task_model

PRETRAINING_HEADS = (
  'mlm_dense',
  'mlm_ln',
  'nsp',
  'lm_head',
)  # pretraining-only params a body may drop


def subsample_train(examples: list, n: int, seed: int, stratify_by=None) -> list:
  """At most n training examples, drawn with `seed`; with a task's STRATIFY_BY key, drawn per
  value in proportion to its counts (at least one each), so every label stays present."""
  if not n or n >= len(examples):
    return examples
  rng = np.random.default_rng([seed, n])
  if not stratify_by:
    return [examples[i] for i in sorted(rng.permutation(len(examples))[:n])]
  by_label = {}
  for i, e in enumerate(examples):
    by_label.setdefault(e[stratify_by], []).append(i)
  keep = []
  for label in sorted(by_label):
    idx = by_label[label]
    k = max(1, round(n * len(idx) / len(examples)))
    keep.extend(rng.permutation(idx)[:k].tolist())
  return [examples[i] for i in sorted(keep)]


# ------------------------------------------------------------------------------------------------
# Loading the body.


def _flat(tree) -> dict:
  return {
    '/'.join(k): v for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items()
  }


def merge_body(params, body, what: str = 'pretrained checkpoint'):
  """params with params['body'] replaced by `body`, after checking names and shapes.

  Every body leaf of the task model must be in `body` with the same shape; `body` may carry
  extra leaves only under PRETRAINING_HEADS. The loaded leaves are cast to the task model's
  dtypes and placed on its shardings."""
  want, have = _flat(params['body']), _flat(body)
  missing = sorted(k for k in want if k not in have)
  shapes = sorted(
    f'{k}: checkpoint {tuple(have[k].shape)} vs model {tuple(want[k].shape)}'
    for k in want
    if k in have and tuple(have[k].shape) != tuple(want[k].shape)
  )
  extra = sorted(k for k in have if k not in want and k.split('/')[0] not in PRETRAINING_HEADS)
  if missing or shapes or extra:
    parts = (
      ([f'missing in {what}: {", ".join(missing[:8])}'] if missing else [])
      + ([f'not in the model: {", ".join(extra[:8])}'] if extra else [])
      + ([f'shape mismatch: {"; ".join(shapes[:8])}'] if shapes else [])
    )
    raise checkpoint.CheckpointError(
      f'{what} does not match the fine-tuning body ({" | ".join(parts)}); the body config must '
      'be the one the checkpoint was trained with (model_overrides may only change dropout, '
      'dtype, remat and the like).'
    )
  new = {k: jax.device_put(jnp.asarray(have[k], want[k].dtype), want[k].sharding) for k in want}
  new_body = flax.traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in new.items()})
  return {**params, 'body': new_body}


# ------------------------------------------------------------------------------------------------
# Training.


def make_train_step(config, model, task_mod, tx, state_sh, mesh):
  """trainer.make_train_step on the task's loss: the mean over its weighted rows or tokens."""

  def loss_fn(params, batch, rng):
    logits = model.apply(
      {'params': params},
      batch['input_ids'],
      batch['token_type_ids'],
      batch['attention_mask'],
      False,
      rngs={'dropout': rng},
    )
    nll, w, correct = task_mod.loss_sums(logits, batch)
    w = jnp.maximum(w, 1.0)
    return nll / w, {'loss': nll / w, 'accuracy': correct / w}

  return trainer.make_train_step(loss_fn, tx, state_sh, mesh, config)


def train_batch(
  features: dict, step: int, batch_size: int, seed: int, rows: slice = slice(None)
) -> dict:
  """`rows` (this process's block, `sharding.process_rows`) of the global batch: rows
  step*B .. step*B+B-1 of the stream of seeded per-epoch permutations, a pure function of the
  step, so a resumed run sees the same batches. Only those rows' features are read."""
  n = len(features['weight'])
  pos = step * batch_size + np.arange(batch_size)
  epochs, within = pos // n, pos % n
  idx = np.empty(batch_size, np.int64)
  for ep in np.unique(epochs):
    perm = np.random.default_rng([seed, int(ep)]).permutation(n)
    idx[epochs == ep] = perm[within[epochs == ep]]
  idx = idx[rows]
  distributed.log_rows('finetune_train', step, idx)
  return {k: v[idx] for k, v in features.items()}


def body_config(pre: pretrained.Pretrained, config) -> M.ModelConfig:
  overrides = dict(config.model_overrides) if 'model_overrides' in config else {}
  cfg = dataclasses.replace(pre.cfg, **overrides)
  if pre.cfg.position == 'learned' and config.data.max_len > cfg.max_len:
    raise ValueError(
      f"data.max_len={config.data.max_len} exceeds the body's max_len="
      f'{cfg.max_len} (learned positions): lower data.max_len.'
    )
  return cfg


def check_evaluation(config, task_mod) -> bool:
  """Whether the run evaluates, after checking its early-stopping settings against the task's
  metrics: a typo fails here, before any data or model is loaded. With data.eval_fraction=0
  and no held-out files or split there is no evaluation (said once), so no early stopping."""
  es = config.get('early_stopping')
  if es is not None:
    loop.check_early_stopping(es.metric, es.mode, es.patience, tasks.reported_metrics(task_mod))
  if sources.has_held_out(config.data):
    return True
  if es is not None and int(es.patience):
    raise ValueError(
      f'early_stopping.patience={es.patience} needs held-out evaluation, but '
      'data.eval_fraction=0 and no data.eval_files / eval_split: set one of them, or '
      'early_stopping.patience=0.'
    )
  print(sources.NO_EVAL)
  return False


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Fine-tunes; returns {'best': {metric: value, step} (None without evaluation), 'final':
  eval metrics, 'stopped': why}."""
  task_mod = tasks.get(config.task)
  held_out = check_evaluation(config, task_mod)
  if not config.init_checkpoint:
    raise ValueError(
      'init_checkpoint is empty: pass a train.py workdir or an HF model directory '
      '(--config.init_checkpoint=...).'
    )
  if config.init not in ('pretrained', 'random'):
    raise ValueError(f"init={config.init!r}: use 'pretrained' or 'random'.")
  devices = jax.devices()[: config.num_devices] if config.get('num_devices') else None
  mesh = sharding.make_mesh(config.mesh_shape, devices)
  evaluation.check_batch(config.train.batch_size, mesh, 'train.batch_size')
  evaluation.check_batch(config.eval_batch_size, mesh, 'eval_batch_size')
  pre = pretrained.load(config.init_checkpoint, mesh)
  if pre.tokenizer is None:
    raise ValueError(
      f'{config.init_checkpoint} has no tokenizer files (tokenizer.json, vocab.txt '
      'or vocab.json + merges.txt).'
    )
  tok = pre.tokenizer
  cfg = body_config(pre, config)

  train_ex, label_names = data_lib.load_examples(config.task, config.data, 'train')
  eval_ex = data_lib.load_examples(config.task, config.data, 'validation')[0] if held_out else []
  labels = task_mod.label_names(train_ex + eval_ex, list(config.data.labels) or label_names)
  train_ex = subsample_train(
    train_ex,
    int(config.data.get('max_train_examples', 0)),
    config.seed,
    getattr(task_mod, 'STRATIFY_BY', None),
  )
  train_data = evaluation.prepare(task_mod, train_ex, tok, labels, config.data, 'training')
  if held_out:
    eval_data = evaluation.prepare(task_mod, eval_ex, tok, labels, config.data, 'validation')

  model = task_model.TaskModel(
    cfg, pre.kind, task_mod.HEAD, len(labels) if labels else 2, config.pooling
  )
  tx = optim.make(config.train)
  state, state_sh = trainer.create_state(
    model, tx, mesh, config.seed, task_model.init_inputs(config.data.max_len)
  )
  if config.init == 'pretrained':
    state = state.replace(params=merge_body(state.params, pre.params, config.init_checkpoint))
  del pre
  print(
    f'{config.task}: {trainer.param_count(state.params):,} params ({config.init} body from '
    f'{config.init_checkpoint}), {len(train_ex)} train / {len(eval_ex)} validation examples, '
    f'{len(train_data.features["weight"])} train rows, labels {labels}, mesh {dict(mesh.shape)}'
  )

  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tok.save(workdir)
    with open(os.path.join(workdir, 'finetune.json'), 'w', encoding='utf-8') as f:
      json.dump(
        {
          'task': config.task,
          'labels': labels,
          'kind': model.kind,
          'head': model.head,
          'pooling': model.pooling,
          'model': dataclasses.asdict(cfg),
          'config': json.loads(config.to_json()),
        },
        f,
        indent=2,
      )

  train_step = make_train_step(config, model, task_mod, tx, state_sh, mesh)
  stop = loop.StopFlag().install()
  evaluate = None
  if held_out:
    predict_step = evaluation.make_predict_step(model, task_mod, state_sh.params, mesh)

    def evaluate(params):
      return evaluation.evaluate(
        task_mod, predict_step, params, eval_data, labels, config, mesh, stop
      )[0]

  rows = sharding.process_rows(config.train.batch_size, mesh)
  fit = loop.fit(
    state,
    train_step,
    lambda step: sharding.shard_batch(
      train_batch(train_data.features, step, config.train.batch_size, config.seed, rows), mesh
    ),
    config,
    workdir,
    stop=stop,
    evaluate=evaluate,
    meta=lambda step: {'config': config.to_json(), 'task': config.task, 'labels': labels},
  )
  return {
    'best': {fit.best.metric: fit.best.value, 'step': fit.best.step} if fit.best else None,
    'final': fit.eval,
    'stopped': fit.stopped,
    'labels': labels,
  }
