"""Evaluating fine-tuned and pretraining checkpoints: batched prediction, task metrics.

Fine-tuning evaluates its validation split through `evaluate` while it trains (and keeps `best/`
by it); eval.py and notebooks evaluate a finished workdir with `evaluate_finetuned` (a
fine-tuned one: task metrics from its `best/` or latest params, on the test split by default,
which nothing was selected on), `evaluate_pretraining` (perplexity and accuracy on the held-out
documents of the prepared data) or `evaluate_text` (a decoder's sliding-window perplexity on a
text file, as HF's "Perplexity of fixed-length models" computes it).
"""

import dataclasses
import functools
import json
import os
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from lm import checkpoint
from lm import distributed
from lm import losses
from lm import model as M
from lm import objectives
from lm import optim
from lm import pretrained
from lm import sharding
from lm import tasks
from lm import trainer
from lm.data import sources
from lm.data import tokenizer as tokenizer_lib
from lm.tasks import data as data_lib
from lm.tasks import model as task_model


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
  for s in range(0, n, batch_size):
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


def evaluate(task_mod, predict_step, params, data: TaskData, labels, config, mesh, stop=None):
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


def config_mesh(config):
  """The mesh a job's config names (`mesh_shape`, `num_devices`), so evaluation shards as the
  job did; all devices data-parallel without one, or when it does not fit this machine (a run
  trained on a pod slice, evaluated on a laptop), said once."""
  shape = tuple(config.get('mesh_shape', (-1, 1, 1))) if config is not None else (-1, 1, 1)
  n = int(config.get('num_devices', 0) or 0) if config is not None else 0
  if n <= jax.device_count():
    try:
      return sharding.make_mesh(shape, jax.devices()[:n] if n else None)
    except ValueError as e:
      reason = str(e).split(':')[0].rstrip('.')
  else:
    reason = f'the job ran on {n} devices'
  print(f'evaluation: {reason}; using all {jax.device_count()} devices data-parallel instead')
  return sharding.make_mesh((-1, 1, 1))


def is_finetune_workdir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, 'finetune.json'))


def finetune_info(workdir: str) -> dict:
  """What finetune.py recorded in WORKDIR/finetune.json (task, labels, model, config)."""
  with open(os.path.join(workdir, 'finetune.json'), encoding='utf-8') as f:
    return json.load(f)


def load_finetuned(workdir: str, mesh, which: str = 'best', step: Optional[int] = None):
  """(info dict from finetune.json, model, params on `mesh`, tokenizer, restored step)."""
  info = finetune_info(workdir)
  cfg = M.ModelConfig.from_dict(info['model'])
  model = task_model.TaskModel(
    cfg,
    info['kind'],
    info['head'],
    len(info['labels']) if info['labels'] else 2,
    info.get('pooling', 'pooler'),
  )
  tok = tokenizer_lib.Tokenizer.load(os.path.join(workdir, 'tokenizer.json'))
  config = ml_collections.ConfigDict(info['config'])
  tx = optim.make(config.train)
  target = trainer.abstract_state(model, tx, mesh, task_model.init_inputs(config.data.max_len))
  best_dir = os.path.join(workdir, 'best')
  if (
    which == 'best'
    and os.path.isdir(best_dir)
    and checkpoint.Checkpointer(best_dir, every=1, read_only=True).latest_step() is not None
  ):
    got = checkpoint.Checkpointer(best_dir, every=1, read_only=True).restore(target.params, step)
    params, _, s = got
  else:
    got = checkpoint.Checkpointer(
      os.path.join(workdir, 'checkpoints'), every=1, read_only=True
    ).restore(target, step)
    if got is None:
      raise FileNotFoundError(f'no checkpoint in {workdir}: fine-tune first.')
    params, s = got[0].params, got[2]
  return info, model, params, tok, s


def evaluate_finetuned(
  workdir: str,
  config=None,
  which: str = 'best',
  mesh=None,
  max_examples: int = 0,
  split: str = 'test',
):
  """Task metrics of a fine-tuned workdir on `split` ('test', or 'validation': what `best/`
  was chosen on) of `config`'s data (default: its own); the result names the split."""
  if split not in ('test', 'validation'):
    raise ValueError(f"split={split!r}: evaluate 'test' or 'validation'.")
  recorded = finetune_info(workdir)
  config = config or ml_collections.ConfigDict(recorded['config'])
  if split == 'validation' and not sources.has_held_out(config.data):
    raise ValueError(
      f'no held-out data to evaluate {workdir} on (data.eval_fraction=0 and no '
      'data.eval_files / eval_split): pass a --config that names some, or --split=test.'
    )
  examples, _ = data_lib.load_examples(recorded['task'], config.data, split)  # before the model
  mesh = mesh or config_mesh(config)
  info, model, params, tok, step = load_finetuned(workdir, mesh, which)
  task_mod = tasks.get(info['task'])
  if max_examples:
    examples = examples[:max_examples]
  data = prepare(task_mod, examples, tok, info['labels'], config.data, f'{split} split')
  params_sh = jax.tree.map(lambda x: x.sharding, params)
  predict_step = make_predict_step(model, task_mod, params_sh, mesh)
  check_batch(config.eval_batch_size, mesh, 'eval_batch_size')
  m, preds = evaluate(task_mod, predict_step, params, data, info['labels'], config, mesh)
  return {'task': info['task'], 'split': split, 'examples': len(examples), 'step': step, **m}, preds


def evaluate_pretraining(path: str, config=None, num_batches: Optional[int] = None, mesh=None):
  """Perplexity and MLM/NSP (or causal LM) accuracy of a pretraining checkpoint on the
  held-out documents of the prepared data train.py evaluates on (or `config`'s data for an HF
  directory, whose tokenizer `config.data.tokenizer.path` must name)."""
  # pylint: disable=g-import-not-at-top
  from lm.data import prepare
  from lm.data import pretrain
  from lm.data import shards

  if config is None and pretrained.is_workdir(path):
    config = pretrained.saved_config(path)
  mesh = mesh or config_mesh(config)
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
    raise ValueError(
      f'the prepared data in {data_dir} uses another tokenizer than {path}: set '
      f'--config.data.tokenizer.path={path} (or evaluate the data it was trained on).'
    )
  eval_corpus = shards.open_eval(data_dir, manifest)
  if eval_corpus is None:
    raise ValueError(
      f'{shards.no_eval_reason(data_dir, manifest)}: nothing held out to evaluate on. Pass '
      "--config (the run's config file) with --config.data.eval_fraction=0.05 and "
      f'--config.data.tokenizer.path={path} to prepare data with held-out documents.'
    )
  batcher = pretrain.make_batcher(
    config, eval_corpus, tok, config.seed + 1
  )  # train.py's eval batches
  model = pre.model
  params = _placed(pre.params, mesh)
  params_sh = jax.tree.map(lambda x: x.sharding, params)
  eval_step = objectives.make_eval_step(config, model, params_sh, mesh)
  n = int(num_batches or config.eval_batches)
  pi, pc = jax.process_index(), jax.process_count()  # each process its block of each batch
  per = batcher.batch_size // pc

  def batches():
    for step, x in enumerate(batcher.eval_batches(n, pi, pc)):
      distributed.log_rows('pretrain_eval', step, range(pi * per, (pi + 1) * per))
      yield sharding.shard_batch(x, mesh)

  out = objectives.evaluate(eval_step, params, batches())
  return {'objective': config.objective, 'step': pre.step, 'batches': n, **out}


def _placed(params, mesh):
  """Params on `mesh`: a workdir's are placed already, an HF directory's (numpy) replicated."""
  return jax.tree.map(
    lambda x: x if isinstance(x, jax.Array) else jax.device_put(x, NamedSharding(mesh, P())),
    params,
  )


def sliding_windows(num_tokens: int, window: int, stride: int) -> list:
  """(begin, end, trg_len) of each window of HF's strided perplexity loop: windows of at most
  `window` tokens start `stride` apart, and each scores only the `trg_len` tokens the previous
  one did not reach (the rest of it is context)."""
  if window < 2:
    raise ValueError(f'window={window}: a window needs at least 2 tokens to predict one.')
  if not 1 <= stride <= window:
    raise ValueError(f'stride={stride} must be in [1, window={window}]: lower --stride.')
  out, prev_end = [], 0
  for begin in range(0, num_tokens, stride):
    end = min(begin + window, num_tokens)
    out.append((begin, end, end - prev_end))
    prev_end = end
    if end == num_tokens:
      break
  return out


@functools.partial(jax.jit, static_argnames=('model', 'chunk'))
def _window_nll_sums(model, params, batch, chunk: int):
  """Per row, the summed NLL of its weighted targets (tied output projection, in chunks)."""
  hidden = model.apply({'params': params}, batch['input_ids'], method='hidden')
  emb = params['embed']['token']['embedding']
  one = lambda h, y, w: losses.chunked_cross_entropy_sums(h, emb, y, w, chunk)[0]
  return jax.vmap(one)(hidden, batch['targets'], batch['weights'])


def sliding_window_perplexity(
  model, params, ids, window: int, stride: int, batch_size: int = 8, mesh=None
) -> dict:
  """Perplexity of a decoder on one long token sequence, by HF's recipe ("Perplexity of
  fixed-length models", transformers docs), number for number:

    each window (`sliding_windows`) is a fresh input (positions from 0); its labels outside the
    last trg_len tokens are -100, so its loss is the mean NLL of the tokens it predicts among
    those (trg_len of them, or trg_len - 1 in the first window, whose first token has no
    context); the loss is weighted by trg_len - 1 (the doc's num_valid_tokens - batch_size),
    and perplexity = exp(sum of weighted losses / sum of weights).

  A window that predicts nothing (a last window of one token when stride == window) weighs 0;
  HF's loop would make that NaN. Windows run `batch_size` at a time, right-padded to `window`
  (causal attention: the padding never reaches a real token); the tied output projection is
  applied in chunks, so no [batch, window, vocab] logits are held.
  """
  ids = np.asarray(ids, np.int32)
  if len(ids) < 2:
    raise ValueError(f'the text has {len(ids)} token(s): perplexity needs at least 2.')
  mesh = mesh or sharding.make_mesh((-1, 1, 1))
  wins = sliding_windows(len(ids), window, stride)
  d = mesh.shape['data'] * mesh.shape['fsdp']
  batch_size = -(-batch_size // d) * d
  rows = -(-len(wins) // batch_size) * batch_size
  inputs = np.zeros((rows, window), np.int32)
  targets = np.zeros((rows, window), np.int32)
  weights = np.zeros((rows, window), np.float32)
  for r, (begin, end, trg_len) in enumerate(wins):
    n = end - begin
    inputs[r, :n] = ids[begin:end]
    targets[r, : n - 1] = ids[begin + 1 : end]  # position t predicts token t + 1
    weights[r, max(n - trg_len, 1) - 1 : n - 1] = 1.0

  params = _placed(params, mesh)
  sums = []
  with sharding.use(mesh):
    for s in range(0, rows, batch_size):
      batch = {
        'input_ids': inputs[s : s + batch_size],
        'targets': targets[s : s + batch_size],
        'weights': weights[s : s + batch_size],
      }
      out = _window_nll_sums(model, params, sharding.shard_batch(batch, mesh), min(window, 512))
      sums.append(np.asarray(jax.device_get(out)))
  sums = np.concatenate(sums)[: len(wins)].astype(np.float64)
  counts = weights[: len(wins)].sum(1).astype(np.float64)
  doc_weights = np.asarray([trg_len - 1 for _, _, trg_len in wins], np.float64)
  means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
  nll = float((means * doc_weights).sum() / doc_weights.sum())
  return {
    'perplexity': float(np.exp(nll)),
    'nll': nll,
    'tokens': int(len(ids)),
    'windows': len(wins),
    'window': int(window),
    'stride': int(stride),
  }


def evaluate_text(
  path: str,
  text_file: str,
  stride: Optional[int] = None,
  window: Optional[int] = None,
  batch_size: int = 8,
  mesh=None,
) -> dict:
  """Sliding-window perplexity (`sliding_window_perplexity`) of the decoder in `path` (train.py
  or DPO workdir, HF GPT-2 directory with its tokenizer files) on the whole of `text_file`,
  tokenized as one sequence. window: the model's max_len by default (HF's n_positions);
  stride: window // 2 by default (the doc's 512 of 1024)."""
  if is_finetune_workdir(path):
    raise ValueError(
      f'{path} is a fine-tuned task model: --text_file takes a train.py or dpo.py (DPO) '
      'workdir or an HF GPT-2 directory.'
    )
  with open(text_file, encoding='utf-8') as f:  # before the model: a wrong path fails at once
    text = f.read()
  mesh = mesh or sharding.make_mesh((-1, 1, 1))
  pre = pretrained.load(path, mesh)
  if pre.kind != 'decoder':
    raise ValueError(
      f'{path} holds an {pre.kind}: sliding-window perplexity needs a decoder (GPT-2 style); '
      'an encoder gets eval.py without --text_file (MLM perplexity).'
    )
  if pre.tokenizer is None:
    raise ValueError(
      f'no tokenizer in {path}: put its tokenizer.json (or vocab.json + merges.txt) there.'
    )
  window = int(window or pre.cfg.max_len)
  if pre.cfg.position == 'learned' and window > pre.cfg.max_len:
    raise ValueError(
      f'window={window} exceeds the model max_len {pre.cfg.max_len}: lower --window.'
    )
  stride = int(stride or max(window // 2, 1))
  out = sliding_window_perplexity(
    pre.model, pre.params, pre.tokenizer.encode(text), window, stride, batch_size, mesh
  )
  return {'text_file': os.path.abspath(text_file), 'step': pre.step, **out}


def is_preference_workdir(path: str) -> bool:
  """A dpo.py or ppo.py workdir: its checkpoints' metadata names the task (reward, dpo, ppo)."""
  return not is_finetune_workdir(path) and checkpoint.saved_task(path) in ('reward', 'dpo', 'ppo')


def evaluate_preference(workdir: str, mesh=None, split: str = 'test') -> dict:
  """The held-out preference metrics dpo.py logs (reward model: pairwise accuracy and margin;
  DPO: implicit-reward accuracy and margins against the frozen reference) for the latest
  checkpoint of a dpo.py workdir, on `split` ('test' or 'validation') of its config's pairs;
  for a ppo.py workdir, the figures it logs on that split's prompts (`_evaluate_ppo`)."""
  if split not in ('test', 'validation'):
    raise ValueError(f"split={split!r}: evaluate 'test' or 'validation'.")
  from lm import preference  # pylint: disable=g-import-not-at-top
  from lm import rlhf  # pylint: disable=g-import-not-at-top

  config = pretrained.saved_config(workdir)
  mesh = mesh or config_mesh(config)
  task, model, params, tok, step = rlhf.load_finetuned(workdir, mesh)
  pairs = preference.load_splits(config.data)[split]
  if task == 'ppo':
    return {'task': task, 'split': split, 'step': step, 'prompts': len(pairs)} | _evaluate_ppo(
      config, model, params, tok, pairs, mesh
    )
  data = preference.encode_pairs(pairs, tok, config.data.seq_len, config.data.max_prompt_len)
  params_sh = jax.tree.map(lambda x: x.sharding, params)
  if task == 'dpo' and not rlhf.attach_reference_logps(
    config, model, params_sh, mesh, {split: data}, workdir
  ):
    return {}
  eval_step = rlhf.make_eval_step(config, model, params_sh, mesh)
  batches = (
    sharding.shard_batch(b, mesh)
    for b in preference.eval_batches(
      data, config.eval_batch_size, jax.process_index(), jax.process_count()
    )
  )
  return {
    'task': task,
    'split': split,
    'step': step,
    'pairs': len(pairs),
    **rlhf.evaluate(eval_step, params, batches),
  }


def _evaluate_ppo(config, model, params, tok, pairs, mesh) -> dict:
  """A ppo.py policy on held-out prompts as ppo.py scores them (one sample per prompt, the run's
  eval_seed, its reward model and reference): mean score, KL, reward, response length, and the
  starting policy's mean score on the same draws' seeds (`start_score`)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from lm import ppo  # pylint: disable=g-import-not-at-top

  start = pretrained.load(config.pretrained, mesh).params
  ref = pretrained.load(config.reference, mesh).params if config.reference else start
  rm_model, rm_params = ppo.load_reward_model(config.reward_model, tok, mesh)
  prompts = ppo.prompt_arrays(pairs, tok, config.data.max_prompt_len)
  ac = ppo.ActorCritic(model.cfg)
  sampler = ppo.make_sampler(ac, rm_model, ppo.settings(config, tok), mesh)
  head = {'kernel': jnp.zeros((model.cfg.hidden_size, 1)), 'bias': jnp.zeros((1,))}  # unused

  def run(decoder_params):
    return ppo.evaluate(
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
