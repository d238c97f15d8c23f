"""Pretraining (train.py): MLM + NSP, causal LM or span corruption, from scratch or continued
from a workdir or an HF directory, and its held-out evaluation (eval.py on such a workdir).

`run` is the whole job; notebooks call it with `get_config()` directly.
"""

import dataclasses
import os
from typing import Optional

import jax
from jax.experimental import multihost_utils

from lm import checkpoint
from lm import cli
from lm import distributed
from lm import loop
from lm import models as M
from lm import objectives
from lm import optim
from lm import pretrained
from lm import progress
from lm import report
from lm import sample
from lm import sharding
from lm import trainer
from lm.models import lora
from lm.data import mixture
from lm.data import shards
from lm.data import tokenizer as tokenizer_lib


def run(config, workdir: str):
  """The whole run; notebooks call it with `get_config()` directly.

  Returns {'step', 'eval': last eval metrics, 'sample': text}; the full history is in
  WORKDIR/metrics.jsonl.
  """
  workdir = cli.writable_dir(workdir)
  pi, pc = jax.process_index(), jax.process_count()
  mesh = sharding.make_mesh(config.mesh_shape)
  init, model_cfg = _continue_from(config, workdir, mesh)  # sets the tokenizer and model config

  # Data: prepared once into token shards beside their tokenizer (shared by every run and
  # host with the same data config), then read row by row: batches are a function of the step.
  # A data.mixture prepares each of its sources so, and mixes their rows by the step's weights.
  sources, tok = mixture.ensure(config.data, pi)
  if pi == 0:
    _keep_tokenizer(tok, workdir, sources[0].directory)
  train_data = mixture.batcher(
    config.data,
    [
      objectives.make_batcher(
        config, shards.open_split(s.directory, 'train', s.manifest), tok, config.seed
      )
      for s in sources
    ],
    config.seed,
    log=lambda step, text: writer.text(step, 'data_mixture', text),
  )
  train_data.row_log = 'pretrain_train'  # LM_ROW_LOG: the rows (and sources) each process reads
  eval_data = _eval_batchers(config, sources, tok, pi)

  # Model, optimizer and state, initialised straight into their shardings (or from the
  # init_checkpoint's params, with a fresh optimizer).
  model = objectives.make_model(config, tok.vocab_size)
  # config.model's own param_dtype; a checkpoint's follows lora.configure's rule
  dtype = model.cfg.param_dtype if model_cfg is None else None
  model = type(model)(lora.configure(model_cfg or model.cfg, config.lora, dtype))
  if config.objective == 'span' and tok.vocab_size + config.data.num_sentinels > (
    model.cfg.vocab_size
  ):  # e.g. an HF T5, whose sentinels are its tokenizer's own <extra_id_k>
    raise ValueError(
      f"span corruption puts {config.data.num_sentinels} sentinels above the tokenizer's "
      f"{tok.vocab_size} ids, past the model's vocab_size {model.cfg.vocab_size}: continue "
      'from a configs/t5.py workdir or lower data.num_sentinels.'
    )
  tx = optim.make(config.train)
  if init is None:
    state, state_sh = trainer.create_state(
      model, tx, mesh, config.seed, objectives.init_inputs(config)
    )
  else:
    state, state_sh = trainer.create_state_from(
      model, tx, mesh, config.seed, objectives.init_inputs(config), init.params
    )
    print(f'continued pretraining from {config.init_checkpoint} (step {init.step})')
  del init
  print(
    f'{config.objective}: {trainer.param_count(state.params):,} params, mesh '
    f'{dict(mesh.shape)}, {pc} process(es), vocab {tok.vocab_size}'
  )

  train_step = objectives.make_train_step(config, model, tx, state_sh, mesh)
  eval_step = objectives.make_eval_step(config, model, state_sh.params, mesh)
  stop = loop.StopFlag().install()
  writer = report.Writer(workdir, config.train.steps, config)  # hears the mixture's phases
  evaluate = None
  if eval_data:

    def batches(name, batcher):
      for i in progress.track(range(config.eval_batches), f'eval {name}'.strip()):
        yield sharding.shard_batch(batcher.get_batch(i, pi, pc), mesh)

    def evaluate(params):
      named = {name: batches(name, b) for name, b in eval_data.items()}
      return objectives.evaluate_sources(eval_step, params, named, stop)

  fit = loop.fit(
    state,
    train_step,
    lambda step: sharding.shard_batch(train_data.get_batch(step, pi, pc), mesh),
    config,
    workdir,
    writer=writer,
    stop=stop,
    evaluate=evaluate,
    eval_at_start=bool(config.init_checkpoint),  # the loaded model on the new data: step 0
    meta=checkpoint.job_meta('pretrain', config, M.record(M.kind_of(model), model.cfg)),
    rate=('tokens_per_sec', config.train.batch_size * config.data.seq_len),
  )
  state, result = fit.state, {'eval': fit.eval, 'sample': None}

  if not fit.stopped:
    params = (
      state.params if pc == 1 else multihost_utils.process_allgather(state.params, tiled=True)
    )
    if pi == 0:
      result['sample'] = sample.sample(
        config.objective, model, params, tok, config.sample_prompt, config.sample_tokens
      )
      writer.text(int(state.step), 'sample', result['sample'])
  writer.close()
  return {'step': int(state.step), **result}


def _eval_batchers(config, sources, tok, pi) -> dict:
  """{source name: batcher of its held-out documents}; a source without any is said once."""
  out = {}
  for s in sources:
    corpus = shards.open_eval(s.directory, s.manifest)  # None: no held-out documents
    if corpus is not None:
      out[s.name] = objectives.make_batcher(config, corpus, tok, config.seed + 1)
    elif pi == 0:
      where = f'data.mixture.{s.name}: ' if s.name else ''
      print(f'{where}{shards.no_eval_reason(s.directory, s.manifest)}: no held-out evaluation.')
  return out


RUNTIME_FIELDS = (
  'dropout_rate',
  'attention_dropout_rate',
  'dtype',
  'remat',
  'attention_impl',
  'context_parallel',
)


def _continue_from(config, workdir: str, mesh):
  """(Pretrained to start from or None, its model config or None) for config.init_checkpoint.

  The architecture and the tokenizer are the checkpoint's: config.model takes its fields (all
  but RUNTIME_FIELDS, which stay this config's) and data.tokenizer.path its tokenizer, so the new
  data is prepared with it. When the workdir already holds a checkpoint, resume wins: the params
  come from there, the model config and tokenizer from the run itself, and the init checkpoint
  is not read at all (it may be gone)."""
  source = config.init_checkpoint
  if not source:
    return None, None
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  if os.path.isdir(ckpt_dir) and checkpoint.Checkpointer(ckpt_dir, read_only=True).latest_step():
    _, rec, _ = pretrained.read_record(workdir)
    init, cfg, tok_path = None, M.config_from_dict(rec['kind'], rec['model']), workdir
  else:
    init = pretrained.load(source, mesh).body(source, 'init_checkpoint')
    cfg, tok_path = init.cfg, source
    want = objectives.KINDS[config.objective]
    if init.kind != want:
      raise ValueError(
        f'init_checkpoint={source} holds an {init.kind}; objective={config.objective!r} trains '
        f'an {want}: pass a checkpoint of the same kind or change config.objective.'
      )
    if init.tokenizer is None:
      raise FileNotFoundError(f'no tokenizer files in init_checkpoint={source}: add them.')
  if pretrained.is_workdir(tok_path):
    tok_path = os.path.join(tok_path, 'tokenizer.json')
  given = config.data.tokenizer.path
  if given and tokenizer_lib.from_hf_files(given).hf.to_str() != (
    tokenizer_lib.from_hf_files(tok_path).hf.to_str()
  ):
    raise ValueError(
      f'data.tokenizer.path={given} is not the tokenizer of init_checkpoint={source}: leave '
      "it empty (the checkpoint's tokenizer is used)."
    )
  config.data.tokenizer.path = tok_path
  arch = {k: v for k, v in dataclasses.asdict(cfg).items() if k in config.model}
  config.model.update({k: v for k, v in arch.items() if k not in RUNTIME_FIELDS})
  cfg = dataclasses.replace(cfg, **{k: config.model[k] for k in RUNTIME_FIELDS})
  if cfg.position == 'learned' and config.data.seq_len > cfg.max_len:
    raise ValueError(
      f'data.seq_len={config.data.seq_len} exceeds the max_len={cfg.max_len} of '
      f'init_checkpoint={source}: lower --config.data.seq_len.'
    )
  return init, cfg


def _keep_tokenizer(tok, workdir: str, data_dir: str):
  """The run's tokenizer.json beside its checkpoints (what loading a workdir reads)."""
  path, text = os.path.join(workdir, 'tokenizer.json'), tok.hf.to_str()
  if os.path.isfile(path):
    with open(path, encoding='utf-8') as f:
      if f.read() != text:
        raise ValueError(
          f'{workdir} was trained with another tokenizer than the prepared data in '
          f'{data_dir}: use a new --workdir, or pass --config.data.tokenizer.path='
          f"{path} to prepare the data with the run's own tokenizer."
        )
    return
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text)


def evaluate(
  path: str,
  config=None,
  split: str = 'test',
  which: str = 'best',
  max_examples: int = 0,
  num_batches: Optional[int] = None,
  mesh=None,
):
  """Perplexity and MLM/NSP (or causal LM) accuracy of a pretraining checkpoint on the
  held-out documents of the prepared data train.py evaluates on (or `config`'s data for an HF
  directory, whose tokenizer `config.data.tokenizer.path` must name)."""
  del split, which, max_examples  # the prepared data's held-out documents; the latest params
  if config is None and pretrained.is_workdir(path):
    config = pretrained.saved_config(path)
  mesh = mesh or sharding.config_mesh(config)
  pre = pretrained.load(path, mesh).body(path, 'pretraining evaluation')
  config = config or pre.config
  if config is None:
    raise ValueError(f'{path} is not a train.py workdir: pass --config (the data to evaluate on).')
  want = 'encoder' if config.objective == 'mlm' else 'decoder'
  if want != pre.kind:
    raise ValueError(f'config.objective={config.objective!r} does not fit a {pre.kind} checkpoint.')
  tok = pre.tokenizer
  sources, prepared_tok = mixture.ensure(config.data)
  if tok is None or prepared_tok.hf.to_str() != tok.hf.to_str():
    raise ValueError(
      f'the prepared data in {sources[0].directory} uses another tokenizer than {path}: set '
      f'--config.data.tokenizer.path={path} (or evaluate the data it was trained on).'
    )
  eval_data = _eval_batchers(config, sources, tok, 1)  # train.py's eval batches, per source
  if not eval_data:
    raise ValueError(
      f'{shards.no_eval_reason(sources[0].directory, sources[0].manifest)}: nothing held out '
      "to evaluate on. Pass --config (the run's config file) with "
      f'--config.data.eval_fraction=0.05 and --config.data.tokenizer.path={path} to prepare '
      'data with held-out documents.'
    )
  model = pre.model
  params = sharding.placed(pre.params, mesh)
  params_sh = jax.tree.map(lambda x: x.sharding, params)
  eval_step = objectives.make_eval_step(config, model, params_sh, mesh)
  n = int(num_batches or config.eval_batches)
  pi, pc = jax.process_index(), jax.process_count()  # each process its block of each batch
  per = config.train.batch_size // pc

  def batches(name, batcher):
    label = f'eval {name}'.strip()
    for step, x in enumerate(progress.track(batcher.eval_batches(n, pi, pc), label, n)):
      distributed.log_rows('pretrain_eval', step, range(pi * per, (pi + 1) * per))
      yield sharding.shard_batch(x, mesh)

  out = objectives.evaluate_sources(
    eval_step, params, {name: batches(name, b) for name, b in eval_data.items()}
  )
  return {'objective': config.objective, 'step': pre.step, 'batches': n, **out}, None
