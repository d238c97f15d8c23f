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
from typing import Any

import flax
from jax.sharding import NamedSharding, PartitionSpec as P
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lm import checkpoint
from lm import distributed
from lm import loop
from lm import models as M
from lm import optim
from lm import pretrained
from lm import progress
from lm import sharding
from lm import tasks
from lm import trainer
from lm.models import lora
from lm.data import sources
from lm.tasks import data as data_lib

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


def merge_body(params, body, cfg: M.ModelConfig, what: str = 'pretrained checkpoint'):
  """params with params['body'] replaced by `body`, after checking names and shapes.

  Every body leaf of the task model (less LoRA adapters: `lora.merge`) must be in `body` with
  the same shape; `body` may carry extra leaves only under PRETRAINING_HEADS. The loaded leaves
  are cast to the task model's dtypes and placed on its shardings; with LoRA the body keeps its
  fresh adapters and is quantized as `cfg` says (`lora.adapt`)."""
  placed = _flat(params['body'])
  want, have = _flat(jax.eval_shape(lambda p: lora.merge(p, cfg), params['body'])), _flat(body)
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
  new = {k: jax.device_put(jnp.asarray(have[k], want[k].dtype), placed[k].sharding) for k in want}
  new_body = flax.traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in new.items()})
  adapted = lora.adapt(new_body, params['body'], cfg)
  return {
    **params,
    'body': jax.device_put(adapted, jax.tree.map(lambda x: x.sharding, params['body'])),
  }


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


def make_predict_step(model, task_mod, params_sh, mesh):
  """(params, batch) -> (logits replicated on every device, (nll_sum, weight_sum, correct_sum))."""

  def fn(params, batch):
    logits = model.apply(
      {'params': params}, batch['input_ids'], batch['token_type_ids'], batch['attention_mask'], True
    )
    return logits, task_mod.loss_sums(logits, batch)

  replicated = NamedSharding(mesh, P())
  return trainer.jit_eval(fn, params_sh, mesh, out_shardings=(replicated, replicated))


def predict(predict_step, params, features: dict, batch_size: int, mesh, stop=None):
  """Logits for every row (padding the last batch with weight-0 rows) and the mean loss.
  Each process reads only its block of each batch (`sharding.process_rows`); the logits come
  back whole (replicated) and the loss from sums reduced over the global batch, so every
  process holds the same figures. Returns (None, None) when `stop` was requested midway."""
  n = len(features['weight'])
  mine = sharding.process_rows(batch_size, mesh)
  logits, nll, weight = [], 0.0, 0.0
  for s in progress.track(range(0, n, batch_size), 'eval'):
    if stop is not None and stop.requested:
      return None, None
    pos = np.arange(s, s + batch_size)[mine]
    rows = np.where(pos < n, pos, 0)
    distributed.log_rows('finetune_eval', s // batch_size, pos[pos < n])
    batch = {k: v[rows] for k, v in features.items()}
    batch['weight'] = batch['weight'] * (pos < n)
    out, (l, w, _) = predict_step(params, sharding.shard_batch(batch, mesh))
    logits.append(np.asarray(jax.device_get(out))[: min(batch_size, n - s)])
    nll, weight = nll + float(l), weight + float(w)
  return np.concatenate(logits), nll / max(weight, 1.0)


@dataclasses.dataclass
class TaskData:
  examples: list
  features: dict
  aux: Any


def task_metrics(task_mod, predict_step, params, data: TaskData, labels, config, mesh, stop=None):
  """(metrics, predictions); metrics include the eval loss. ({} , []) when stopped. The task's
  metrics are scored once, on process 0, and sent to the others (which get no predictions)."""
  logits, loss = predict(
    predict_step, params, data.features, int(config.eval_batch_size), mesh, stop
  )
  if logits is None:
    return {}, []
  preds = []

  def score():
    nonlocal preds
    m, preds = task_mod.score(logits, data.features, data.aux, data.examples, labels, config.data)
    return m

  return {**distributed.from_process_0(score), 'loss': loss}, preds


def prepare(task_mod, examples, tok, labels, data_cfg, what: str) -> TaskData:
  if not examples:
    raise ValueError(f'no {what} examples: check data.source / files / split.')
  features, aux = task_mod.featurize(examples, tok, labels, data_cfg)
  return TaskData(examples, features, aux)


def check_batch(batch_size: int, mesh, what: str):
  d = mesh.shape['data'] * mesh.shape['fsdp']
  if batch_size % d:
    raise ValueError(
      f'{what}={batch_size} must divide by the {d} data-parallel devices of mesh '
      f'{dict(mesh.shape)}.'
    )


def body_config(pre: pretrained.Pretrained, config) -> M.ModelConfig:
  cfg = lora.for_job(pre.cfg, config)
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
  check_batch(config.train.batch_size, mesh, 'train.batch_size')
  check_batch(config.eval_batch_size, mesh, 'eval_batch_size')
  pre = pretrained.load(config.init_checkpoint, mesh).body(config.init_checkpoint, 'finetune.py')
  pre_kind = pre.kind
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
  train_data = prepare(task_mod, train_ex, tok, labels, config.data, 'training')
  if held_out:
    eval_data = prepare(task_mod, eval_ex, tok, labels, config.data, 'validation')

  model = M.TaskModel(cfg, pre.kind, task_mod.HEAD, len(labels) if labels else 2, config.pooling)
  tx = optim.make(config.train)
  state, state_sh = trainer.create_state(
    model, tx, mesh, config.seed, M.task_init_inputs(config.data.max_len)
  )
  if config.init == 'pretrained':
    state = state.replace(params=merge_body(state.params, pre.params, cfg, config.init_checkpoint))
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
    predict_step = make_predict_step(model, task_mod, state_sh.params, mesh)

    def evaluate(params):
      return task_metrics(task_mod, predict_step, params, eval_data, labels, config, mesh, stop)[0]

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
    meta=checkpoint.job_meta(
      'finetune',
      config,
      M.record(
        pre_kind,
        cfg,
        'task',
        output=model.head,
        num_outputs=model.num_outputs,
        pooling=model.pooling,
      ),
    ),
  )
  return {
    'best': {fit.best.metric: fit.best.value, 'step': fit.best.step} if fit.best else None,
    'final': fit.eval,
    'stopped': fit.stopped,
    'labels': labels,
  }


# ------------------------------------------------------------------ evaluating a finished run


def finetune_info(workdir: str) -> dict:
  """What finetune.py recorded in WORKDIR/finetune.json (task, labels, model, config)."""
  with open(os.path.join(workdir, 'finetune.json'), encoding='utf-8') as f:
    return json.load(f)


def evaluate(
  workdir: str,
  config=None,
  split: str = 'test',
  which: str = 'best',
  max_examples: int = 0,
  num_batches=None,
  mesh=None,
):
  """Task metrics of a fine-tuned workdir on `split` ('test', or 'validation': what `best/`
  was chosen on) of `config`'s data (default: its own); the result names the split."""
  if split not in ('test', 'validation'):
    raise ValueError(f"split={split!r}: evaluate 'test' or 'validation'.")
  del num_batches  # every example of the split
  recorded = finetune_info(workdir)
  config = config or ml_collections.ConfigDict(recorded['config'])
  if split == 'validation' and not sources.has_held_out(config.data):
    raise ValueError(
      f'no held-out data to evaluate {workdir} on (data.eval_fraction=0 and no '
      'data.eval_files / eval_split): pass a --config that names some, or --split=test.'
    )
  examples, _ = data_lib.load_examples(recorded['task'], config.data, split)  # before the model
  mesh = mesh or sharding.config_mesh(config)
  got = pretrained.load(workdir, mesh, which=which)
  model, params, tok, step = got.model, got.params, got.tokenizer, got.step
  task_mod = tasks.get(recorded['task'])
  if max_examples:
    examples = examples[:max_examples]
  data = prepare(task_mod, examples, tok, recorded['labels'], config.data, f'{split} split')
  params_sh = jax.tree.map(lambda x: x.sharding, params)
  predict_step = make_predict_step(model, task_mod, params_sh, mesh)
  check_batch(config.eval_batch_size, mesh, 'eval_batch_size')
  m, preds = task_metrics(task_mod, predict_step, params, data, recorded['labels'], config, mesh)
  return {
    'task': recorded['task'],
    'split': split,
    'examples': len(examples),
    'step': step,
    **m,
  }, preds
