"""Fine-tuning a pretrained body with a new task head, and evaluating the result.

The body comes from `lm.pretrained.load` (our train.py workdir or an HF BERT/GPT-2 directory),
restored onto this run's mesh whatever mesh it was saved from. `merge_body` puts it into the
freshly initialised task model after checking every body parameter's name and shape: a missing,
unexpected or reshaped tensor is an error, never a partial load. Only the pretraining heads
(MLM transform, NSP) may be left behind.

The loop mirrors train.py: step-indexed batches (a resumed run sees the batches an uninterrupted
one would), periodic checkpoints in `workdir/checkpoints` (full state, for resume), the best
params by the validation metric in `workdir/best` (keep 1), early stopping after
`early_stopping.patience` evaluations without improvement, SIGTERM/SIGINT save and exit at the
next step boundary (trainer.StopFlag, checked in evaluation too), a non-finite loss stops the run
(trainer.check_finite) and is never checkpointed. `workdir/finetune.json` records what eval.py
needs to rebuild the model (task, labels, body kind and config); tokenizer.json sits beside it.
"""
import dataclasses
import json
import os
import time
from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from lm import checkpoint
from lm import model as M
from lm import optim
from lm import pretrained
from lm import report
from lm import sharding
from lm import tasks
from lm import trainer
from lm.data import tokenizer as tokenizer_lib
from lm.tasks import data as data_lib

PRETRAINING_HEADS = ('mlm_dense', 'mlm_ln', 'nsp')  # pretraining-only params a body may drop


class TaskModel(nn.Module):
  """Encoder/Decoder body (params under 'body') + a linear head (params under 'head').

  head: 'pooled' -> [B, num_outputs]; 'tokens' -> [B, T, num_outputs]; 'span' -> [B, T, 2]
  start/end logits. pooling (head 'pooled'): 'pooler' = BERT's tanh pooler on [CLS] (Encoder) or
  the last real token (Decoder); 'mean' = mean of the final hidden states over real tokens,
  which carries more than an NSP-trained pooler after a short pretraining run."""
  cfg: M.ModelConfig
  kind: str
  head: str
  num_outputs: int
  pooling: str = 'pooler'

  @nn.compact
  def __call__(self, input_ids, token_type_ids=None, attention_mask=None, deterministic=True):
    c = self.cfg
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if self.kind == 'encoder':
      hidden, pooled = M.Encoder(c, name='body').encode(input_ids, token_type_ids, attention_mask,
                                                        deterministic)
    elif self.kind == 'decoder':
      hidden = M.Decoder(c, name='body').hidden(input_ids, attention_mask=attention_mask,
                                                deterministic=deterministic)
      last = jnp.maximum(jnp.sum(attention_mask, -1) - 1, 0)
      pooled = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    else:
      raise ValueError(f'body kind {self.kind!r}: use encoder or decoder.')
    if self.pooling == 'mean':
      m = attention_mask.astype(hidden.dtype)[..., None]
      pooled = jnp.sum(hidden * m, 1) / jnp.maximum(jnp.sum(m, 1), 1.0)
    elif self.pooling != 'pooler':
      raise ValueError(f"pooling={self.pooling!r}: use 'pooler' or 'mean'.")
    n = 2 if self.head == 'span' else self.num_outputs
    dense = nn.Dense(n, dtype=c.dtype, param_dtype=c.param_dtype, name='head',
                     kernel_init=nn.with_logical_partitioning(
                         nn.initializers.normal(c.initializer_range), ('embed', 'classes')),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                            ('classes',)))
    drop = nn.Dropout(c.dropout_rate)
    if self.head == 'pooled':
      return dense(drop(pooled, deterministic=deterministic)).astype(jnp.float32)
    if self.head in ('tokens', 'span'):
      return dense(drop(hidden, deterministic=deterministic)).astype(jnp.float32)
    raise ValueError(f'head {self.head!r}: use pooled, tokens or span.')


def base_config(task: str) -> ml_collections.ConfigDict:
  """Defaults every fine-tuning config shares; configs/finetune_*.py set their task's choices."""
  from ml_collections import config_dict  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict()
  c.task = task                   # 'classification' | 'qa' | 'tokens'
  c.init_checkpoint = ''          # train.py workdir or HF BERT/GPT-2 directory
  c.init = 'pretrained'           # 'pretrained' | 'random' (same architecture/tokenizer, fresh body)
  c.seed = 0
  c.mesh_shape = (-1, 1, 1)
  c.pooling = 'pooler'            # classification: 'pooler' ([CLS] / last token) | 'mean'
  c.num_devices = 0               # use the first N devices (0 = all)
  c.model_overrides = ml_collections.ConfigDict(dict(dropout_rate=0.1,
                                                     attention_dropout_rate=0.1))
  c.data = ml_collections.ConfigDict()
  c.data.source = 'python_docs'   # 'python_docs' (offline default) | 'files' | 'tfds'
  c.data.train_file = ''
  c.data.eval_file = ''
  c.data.tfds_name = ''
  c.data.data_dir = config_dict.placeholder(str)
  c.data.train_split = 'train'
  c.data.eval_split = 'validation'
  c.data.max_examples = 0         # tfds: 0 = all
  c.data.max_train_examples = 0   # >0: a seeded, label-stratified subset of the training set
                                  # (a low-resource run); evaluation always uses all examples
  c.data.eval_fraction = 0.2      # python_docs: held-out share (hash split)
  c.data.labels = ()              # label names in id order; () = from the data
  c.data.max_len = 128
  c.data.max_query_len = 32       # qa
  c.data.doc_stride = 64          # qa: tokens between window starts
  c.data.max_answer_len = 64      # qa: tokens
  c.data.n_best = 20              # qa
  c.train = ml_collections.ConfigDict(dict(
      batch_size=32, steps=1000, lr=5e-5, warmup_steps=100, schedule='linear',
      end_lr_fraction=0.0, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6, clip_norm=1.0,
      body_lr_scale=1.0))        # the body's learning rate is lr * body_lr_scale; the head's is lr
  c.eval_batch_size = 64
  c.early_stopping = ml_collections.ConfigDict(dict(metric='accuracy', mode='max', patience=0))
  c.log_every = 50
  c.eval_every = 200
  c.checkpoint_every = 200
  c.keep_checkpoints = 2
  c.async_checkpoints = True
  return c


def make_optimizer(train_cfg) -> optax.GradientTransformation:
  """optim.make (AdamW, warmup/decay, clipping), with the body's updates (learning rate and
  decoupled weight decay alike) scaled by train.body_lr_scale when that is not 1."""
  tx = optim.make(train_cfg)
  scale = float(train_cfg.get('body_lr_scale', 1.0))
  if scale == 1.0:
    return tx

  def scale_body(updates, params):
    del params
    return {k: (jax.tree.map(lambda u: u * scale, v) if k == 'body' else v)
            for k, v in updates.items()}
  return optax.chain(tx, optax.stateless(scale_body))


def subsample_train(examples: list, n: int, seed: int, task: str) -> list:
  """At most n training examples, drawn with `seed`; classification draws per label in
  proportion to the label counts (at least one each), so every label stays present."""
  if not n or n >= len(examples):
    return examples
  rng = np.random.default_rng([seed, n])
  if task != 'classification':
    return [examples[i] for i in sorted(rng.permutation(len(examples))[:n])]
  by_label = {}
  for i, e in enumerate(examples):
    by_label.setdefault(e['label'], []).append(i)
  keep = []
  for label in sorted(by_label):
    idx = by_label[label]
    k = max(1, round(n * len(idx) / len(examples)))
    keep.extend(rng.permutation(idx)[:k].tolist())
  return [examples[i] for i in sorted(keep)]


def init_inputs(max_len: int):
  ids = jnp.zeros((1, max_len), jnp.int32)
  return ids, ids, jnp.ones((1, max_len), jnp.int32)


# ------------------------------------------------------------------------------------------------
# Loading the body.


def _flat(tree) -> dict:
  return {'/'.join(k): v for k, v in flax.traverse_util.flatten_dict(
      flax.core.unfreeze(tree)).items()}


def merge_body(params, body, what: str = 'pretrained checkpoint'):
  """params with params['body'] replaced by `body`, after checking names and shapes.

  Every body leaf of the task model must be in `body` with the same shape; `body` may carry
  extra leaves only under PRETRAINING_HEADS. The loaded leaves are cast to the task model's
  dtypes and placed on its shardings."""
  want, have = _flat(params['body']), _flat(body)
  missing = sorted(k for k in want if k not in have)
  shapes = sorted(f'{k}: checkpoint {tuple(have[k].shape)} vs model {tuple(want[k].shape)}'
                  for k in want if k in have and tuple(have[k].shape) != tuple(want[k].shape))
  extra = sorted(k for k in have if k not in want and k.split('/')[0] not in PRETRAINING_HEADS)
  if missing or shapes or extra:
    parts = ([f'missing in {what}: {", ".join(missing[:8])}'] if missing else []) + \
            ([f'not in the model: {", ".join(extra[:8])}'] if extra else []) + \
            ([f'shape mismatch: {"; ".join(shapes[:8])}'] if shapes else [])
    raise checkpoint.CheckpointError(
        f'{what} does not match the fine-tuning body ({" | ".join(parts)}); the body config must '
        'be the one the checkpoint was trained with (model_overrides may only change dropout, '
        'dtype, remat and the like).')
  new = {k: jax.device_put(jnp.asarray(have[k], want[k].dtype), want[k].sharding)
         for k in want}
  new_body = flax.traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in new.items()})
  return {**params, 'body': new_body}


# ------------------------------------------------------------------------------------------------
# Steps.


def make_train_step(config, model, task_mod, tx, state_sh, mesh):
  base_rng = jax.random.PRNGKey(config.seed + 1)
  lr = optim.schedule(config.train)

  def step_fn(state, batch):
    rng = jax.random.fold_in(base_rng, state.step)  # dropout depends on the step: exact resume

    def loss_fn(params):
      logits = model.apply({'params': params}, batch['input_ids'], batch['token_type_ids'],
                           batch['attention_mask'], False, rngs={'dropout': rng})
      nll, w, correct = task_mod.loss_sums(logits, batch)
      w = jnp.maximum(w, 1.0)
      return nll / w, correct / w

    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    m = {'loss': loss, 'accuracy': acc, 'grad_norm': optax.global_norm(grads),
         'learning_rate': lr(state.step)}
    return trainer.TrainState(step=state.step + 1, params=params, opt_state=opt_state), m

  jitted = jax.jit(step_fn, in_shardings=(state_sh, sharding.batch_sharding(mesh)),
                   out_shardings=(state_sh, None), donate_argnums=(0,))
  return sharding.with_mesh(jitted, mesh)


def make_predict_step(model, task_mod, params_sh, mesh):
  """(params, batch) -> (logits replicated on every device, (nll_sum, weight_sum, correct_sum))."""
  def fn(params, batch):
    logits = model.apply({'params': params}, batch['input_ids'], batch['token_type_ids'],
                         batch['attention_mask'], True)
    return logits, task_mod.loss_sums(logits, batch)
  jitted = jax.jit(fn, in_shardings=(params_sh, sharding.batch_sharding(mesh)),
                   out_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P())))
  return sharding.with_mesh(jitted, mesh)


def train_batch(features: dict, step: int, batch_size: int, seed: int) -> dict:
  """Rows step*B .. step*B+B-1 of the stream of seeded per-epoch permutations: a pure
  function of the step, so a resumed run sees the same batches."""
  n = len(features['weight'])
  pos = step * batch_size + np.arange(batch_size)
  epochs, within = pos // n, pos % n
  idx = np.empty(batch_size, np.int64)
  for ep in np.unique(epochs):
    perm = np.random.default_rng([seed, int(ep)]).permutation(n)
    idx[epochs == ep] = perm[within[epochs == ep]]
  return {k: v[idx] for k, v in features.items()}


def predict(predict_step, params, features: dict, batch_size: int, mesh, stop=None):
  """Logits for every row (padding the last batch with weight-0 rows) and the mean loss.
  Returns (None, None) when `stop` was requested midway."""
  n = len(features['weight'])
  logits, nll, weight = [], 0.0, 0.0
  for s in range(0, n, batch_size):
    if stop is not None and stop.requested:
      return None, None
    rows = np.arange(s, min(s + batch_size, n))
    pad = batch_size - len(rows)
    batch = {k: v[np.concatenate([rows, np.zeros(pad, np.int64)])] for k, v in features.items()}
    batch['weight'] = batch['weight'] * (np.arange(batch_size) < len(rows))
    out, (l, w, _) = predict_step(params, sharding.shard_batch(batch, mesh))
    logits.append(np.asarray(jax.device_get(out))[:len(rows)])
    nll, weight = nll + float(l), weight + float(w)
  return np.concatenate(logits), nll / max(weight, 1.0)


@dataclasses.dataclass
class TaskData:
  examples: list
  features: dict
  aux: Any


def evaluate(task_mod, predict_step, params, data: TaskData, labels, config, mesh, stop=None):
  """(metrics, predictions); metrics include the eval loss. ({} , []) when stopped."""
  logits, loss = predict(predict_step, params, data.features, int(config.eval_batch_size), mesh,
                         stop)
  if logits is None:
    return {}, []
  m, preds = task_mod.score(logits, data.features, data.aux, data.examples, labels, config.data)
  return {**m, 'loss': loss}, preds


# ------------------------------------------------------------------------------------------------
# Setup shared by fine-tuning and evaluation.


def prepare(task_mod, examples, tok, labels, data_cfg, what: str) -> TaskData:
  if not examples:
    raise ValueError(f'no {what} examples: check data.source / files / split.')
  features, aux = task_mod.featurize(examples, tok, labels, data_cfg)
  return TaskData(examples, features, aux)


def _check_batch(batch_size: int, mesh, what: str):
  d = mesh.shape['data'] * mesh.shape['fsdp']
  if batch_size % d:
    raise ValueError(f'{what}={batch_size} must divide by the {d} data-parallel devices of mesh '
                     f'{dict(mesh.shape)}.')


def body_config(pre: pretrained.Pretrained, config) -> M.ModelConfig:
  overrides = dict(config.model_overrides) if 'model_overrides' in config else {}
  cfg = dataclasses.replace(pre.cfg, **overrides)
  if pre.cfg.position == 'learned' and config.data.max_len > cfg.max_len:
    raise ValueError(f'data.max_len={config.data.max_len} exceeds the body\'s max_len='
                     f'{cfg.max_len} (learned positions): lower data.max_len.')
  return cfg


def _better(a, b, mode):
  return b is None or (a > b if mode == 'max' else a < b)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Fine-tunes; returns {'best': {metric: value, step}, 'final': eval metrics, 'stopped': why}."""
  task_mod = tasks.get(config.task)
  if not config.init_checkpoint:
    raise ValueError('init_checkpoint is empty: pass a train.py workdir or an HF model directory '
                     '(--config.init_checkpoint=...).')
  if config.init not in ('pretrained', 'random'):
    raise ValueError(f"init={config.init!r}: use 'pretrained' or 'random'.")
  devices = jax.devices()[:config.num_devices] if config.get('num_devices') else None
  mesh = sharding.make_mesh(config.mesh_shape, devices)
  _check_batch(config.train.batch_size, mesh, 'train.batch_size')
  _check_batch(config.eval_batch_size, mesh, 'eval_batch_size')
  pre = pretrained.load(config.init_checkpoint, mesh)
  if pre.tokenizer is None:
    raise ValueError(f'{config.init_checkpoint} has no tokenizer files (tokenizer.json, vocab.txt '
                     'or vocab.json + merges.txt).')
  tok = pre.tokenizer
  cfg = body_config(pre, config)

  train_ex, label_names = data_lib.load_examples(config.task, config.data, 'train')
  eval_ex, _ = data_lib.load_examples(config.task, config.data, 'validation')
  labels = task_mod.label_names(train_ex + eval_ex, list(config.data.labels) or label_names)
  train_ex = subsample_train(train_ex, int(config.data.get('max_train_examples', 0)), config.seed,
                             config.task)
  train_data = prepare(task_mod, train_ex, tok, labels, config.data, 'training')
  eval_data = prepare(task_mod, eval_ex, tok, labels, config.data, 'evaluation')

  model = TaskModel(cfg, pre.kind, task_mod.HEAD, len(labels) if labels else 2, config.pooling)
  tx = make_optimizer(config.train)
  state, state_sh = trainer.create_state(model, tx, mesh, config.seed,
                                         init_inputs(config.data.max_len))
  if config.init == 'pretrained':
    state = state.replace(params=merge_body(state.params, pre.params, config.init_checkpoint))
  del pre
  print(f'{config.task}: {trainer.param_count(state.params):,} params ({config.init} body from '
        f'{config.init_checkpoint}), {len(train_ex)} train / {len(eval_ex)} eval examples, '
        f'{len(train_data.features["weight"])} train rows, labels {labels}, mesh {dict(mesh.shape)}')

  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tok.save(workdir)
    with open(os.path.join(workdir, 'finetune.json'), 'w', encoding='utf-8') as f:
      json.dump({'task': config.task, 'labels': labels, 'kind': model.kind, 'head': model.head,
                 'pooling': model.pooling,
                 'model': dataclasses.asdict(cfg), 'config': json.loads(config.to_json())}, f,
                indent=2)

  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                 every=config.checkpoint_every, keep=config.keep_checkpoints,
                                 async_save=config.async_checkpoints)
  best_ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'best'), every=1, keep=1,
                                      async_save=False)
  es = config.early_stopping
  best_value, best_step, bad_evals, last_ckpt = None, None, 0, None
  restored = ckpt.restore(state)
  if restored:
    state, meta, last_ckpt = restored
    best_value, best_step, bad_evals = meta.get('best_value'), meta.get('best_step'), meta.get(
        'bad_evals', 0)
    print(f'resumed from step {last_ckpt} (best {es.metric}={best_value} at step {best_step})')
  start = int(state.step)

  train_step = make_train_step(config, model, task_mod, tx, state_sh, mesh)
  predict_step = make_predict_step(model, task_mod, state_sh.params, mesh)
  writer = report.Writer(workdir, config.train.steps)
  stop = trainer.StopFlag().install()
  steps, stopped, final, metrics = int(config.train.steps), None, {}, None
  t0, timed = time.time(), 0

  def meta(step):
    return {'step': step, 'config': config.to_json(), 'task': config.task, 'labels': labels,
            'best_value': best_value, 'best_step': best_step, 'bad_evals': bad_evals}

  for step in range(start, steps):
    batch = train_batch(train_data.features, step, config.train.batch_size, config.seed)
    state, metrics = train_step(state, sharding.shard_batch(batch, mesh))
    done, timed = step + 1, timed + 1
    if done % config.log_every == 0 or done == steps:
      metrics = jax.device_get(metrics)
      trainer.check_finite(metrics, done, last_ckpt)
      writer.write(done, {**metrics, 'steps_per_sec': timed / (time.time() - t0)})
      t0, timed = time.time(), 0
    early = False
    if done % config.eval_every == 0 or done == steps:
      result, _ = evaluate(task_mod, predict_step, state.params, eval_data, labels, config, mesh,
                           stop)
      if result:
        final = result
        writer.write(done, {k: v for k, v in result.items() if k != 'count'}, 'eval')
        value = float(result[es.metric])
        if _better(value, best_value, es.mode):
          best_value, best_step, bad_evals = value, done, 0
          trainer.check_finite(jax.device_get(metrics), done, last_ckpt)
          best_ckpt.save(done, state.params, {**meta(done), 'metrics': result}, force=True)
        else:
          bad_evals += 1
          early = bool(es.patience) and bad_evals >= es.patience
    if ckpt.should_save(done) or stop.requested or early or done == steps:
      trainer.check_finite(jax.device_get(metrics), done, last_ckpt)  # never save a NaN state
      ckpt.save(done, state, meta(done), force=True)
      last_ckpt = done
    if early:
      stopped = f'early stopping: no {es.metric} improvement in {bad_evals} evaluations'
      print(f'{stopped}; best {es.metric}={best_value:.4f} at step {best_step}.')
      break
    if stop.requested:
      stopped = f'{stop.signal}'
      print(f'{stop.signal}: saved step {done}, exiting.')
      break

  ckpt.close()
  best_ckpt.close()
  writer.close()
  return {'best': {es.metric: best_value, 'step': best_step}, 'final': final, 'stopped': stopped,
          'labels': labels}


# ------------------------------------------------------------------------------------------------
# Evaluation of a fine-tuned workdir.


def is_finetune_workdir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, 'finetune.json'))


def load_finetuned(workdir: str, mesh, which: str = 'best', step: Optional[int] = None):
  """(info dict from finetune.json, model, params on `mesh`, tokenizer, restored step)."""
  with open(os.path.join(workdir, 'finetune.json'), encoding='utf-8') as f:
    info = json.load(f)
  cfg = M.ModelConfig.from_dict(info['model'])
  model = TaskModel(cfg, info['kind'], info['head'], len(info['labels']) if info['labels'] else 2,
                    info.get('pooling', 'pooler'))
  tok = tokenizer_lib.Tokenizer.load(os.path.join(workdir, 'tokenizer.json'))
  config = ml_collections.ConfigDict(info['config'])
  tx = make_optimizer(config.train)
  target = trainer.abstract_state(model, tx, mesh, init_inputs(config.data.max_len))
  best_dir = os.path.join(workdir, 'best')
  if which == 'best' and os.path.isdir(best_dir) and checkpoint.Checkpointer(
      best_dir, every=1, read_only=True).latest_step() is not None:
    got = checkpoint.Checkpointer(best_dir, every=1, read_only=True).restore(target.params, step)
    params, _, s = got
  else:
    got = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), every=1,
                                  read_only=True).restore(target, step)
    if got is None:
      raise FileNotFoundError(f'no checkpoint in {workdir}: fine-tune first.')
    params, s = got[0].params, got[2]
  return info, model, params, tok, s


def evaluate_finetuned(workdir: str, config=None, which: str = 'best', mesh=None,
                       max_examples: int = 0):
  """Task metrics of a fine-tuned workdir on `config`'s eval data (default: its own)."""
  mesh = mesh or sharding.make_mesh((-1, 1, 1))
  info, model, params, tok, step = load_finetuned(workdir, mesh, which)
  config = config or ml_collections.ConfigDict(info['config'])
  task_mod = tasks.get(info['task'])
  examples, _ = data_lib.load_examples(info['task'], config.data, 'validation')
  if max_examples:
    examples = examples[:max_examples]
  data = prepare(task_mod, examples, tok, info['labels'], config.data, 'evaluation')
  params_sh = jax.tree.map(lambda x: x.sharding, params)
  predict_step = make_predict_step(model, task_mod, params_sh, mesh)
  _check_batch(config.eval_batch_size, mesh, 'eval_batch_size')
  m, preds = evaluate(task_mod, predict_step, params, data, info['labels'], config, mesh)
  return {'task': info['task'], 'step': step, **m}, preds


def evaluate_pretraining(path: str, config=None, num_batches: Optional[int] = None, mesh=None):
  """Perplexity and MLM/NSP (or causal LM) accuracy of a pretraining checkpoint on the
  held-out documents of the prepared data train.py evaluates on (or `config`'s data for an HF
  directory, whose tokenizer `config.data.tokenizer.path` must name)."""
  # pylint: disable=g-import-not-at-top
  from lm.data import prepare
  from lm.data import pretrain
  from lm.data import shards
  mesh = mesh or sharding.make_mesh((-1, 1, 1))
  pre = pretrained.load(path, mesh)
  config = config or pre.config
  if config is None:
    raise ValueError(f'{path} is not a train.py workdir: pass --config (the data to evaluate on).')
  want = 'encoder' if config.objective == 'mlm' else 'decoder'
  if want != pre.kind:
    raise ValueError(f'config.objective={config.objective!r} does not fit a {pre.kind} checkpoint.')
  tok = pre.tokenizer
  data_dir, manifest, prepared_tok = prepare.ensure(config.data)
  if tok is None or prepared_tok.hf.to_str() != tok.hf.to_str():
    raise ValueError(f'the prepared data in {data_dir} uses another tokenizer than {path}: set '
                     f'--config.data.tokenizer.path={path} (or evaluate the data it was trained on).')
  eval_corpus = shards.open_eval(data_dir, manifest)
  batcher = pretrain.make_batcher(config, eval_corpus, tok, config.seed + 1)  # train.py's eval batches
  model = pre.model
  params = jax.tree.map(lambda x: x if isinstance(x, jax.Array) else
                        jax.device_put(x, NamedSharding(mesh, P())), pre.params)
  params_sh = jax.tree.map(lambda x: x.sharding, params)
  eval_step = trainer.make_eval_step(config, model, params_sh, mesh)
  n = int(num_batches or config.eval_batches)
  batches = (sharding.shard_batch(x, mesh) for x in batcher.eval_batches(n))
  out = trainer.evaluate(eval_step, params, batches)
  return {'objective': config.objective, 'step': pre.step, 'batches': n, **out}
