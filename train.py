r"""Pretrains a Transformer LM (BERT-style MLM+NSP or GPT-style causal LM).

  python train.py --config=configs/base.py --workdir=/tmp/lm_base [--config.train.steps=100]

Resumes from the latest checkpoint in --workdir. SIGTERM/SIGINT save a checkpoint at the
next step boundary and exit cleanly.
"""

import os

from absl import flags
import jax
from jax.experimental import multihost_utils
from ml_collections import config_flags

from lm import cli
from lm import loop
from lm import objectives
from lm import optim
from lm import report
from lm import sample
from lm import sharding
from lm import trainer
from lm.data import prepare
from lm.data import pretrain
from lm.data import shards

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, tokenizer, metrics.jsonl and TensorBoard logs.')
flags.mark_flags_as_required(['config', 'workdir'])


def train_and_evaluate(config, workdir: str):
  """The whole run; notebooks call it with `get_config()` directly.

  Returns {'step', 'eval': last eval metrics, 'sample': text}; the full history is in
  WORKDIR/metrics.jsonl.
  """
  workdir = cli.writable_dir(workdir)
  pi, pc = jax.process_index(), jax.process_count()

  # Data: prepared once into token shards beside their tokenizer (shared by every run and
  # host with the same data config), then read row by row: batches are a function of the step.
  data_dir, manifest, tok = prepare.ensure(config.data, pi)
  if pi == 0:
    _keep_tokenizer(tok, workdir, data_dir)
  train_corpus = shards.open_split(data_dir, 'train', manifest)
  eval_corpus = shards.open_eval(data_dir, manifest)  # None: no held-out documents
  if eval_corpus is None and pi == 0:
    print(f'{shards.no_eval_reason(data_dir, manifest)}: no held-out evaluation.')
  train_data = pretrain.make_batcher(config, train_corpus, tok, config.seed)

  # Model, optimizer and state, initialised straight into their shardings.
  mesh = sharding.make_mesh(config.mesh_shape)
  model = objectives.make_model(config, tok.vocab_size)
  tx = optim.make(config.train)
  state, state_sh = trainer.create_state(
    model, tx, mesh, config.seed, objectives.init_inputs(config)
  )
  print(
    f'{config.objective}: {trainer.param_count(state.params):,} params, mesh '
    f'{dict(mesh.shape)}, {pc} process(es), vocab {tok.vocab_size}'
  )

  train_step = objectives.make_train_step(config, model, tx, state_sh, mesh)
  eval_step = objectives.make_eval_step(config, model, state_sh.params, mesh)
  stop = loop.StopFlag().install()
  writer = report.Writer(workdir, config.train.steps)
  evaluate = None
  if eval_corpus is not None:
    eval_data = pretrain.make_batcher(config, eval_corpus, tok, config.seed + 1)

    def evaluate(params):
      batches = (
        sharding.shard_batch(eval_data.get_batch(i, pi, pc), mesh)
        for i in range(config.eval_batches)
      )
      return objectives.evaluate(eval_step, params, batches, stop)

  fit = loop.fit(
    state,
    train_step,
    lambda step: sharding.shard_batch(train_data.get_batch(step, pi, pc), mesh),
    config,
    workdir,
    writer=writer,
    stop=stop,
    evaluate=evaluate,
    meta=lambda step: {'data_position': step, 'config': config.to_json()},
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


if __name__ == '__main__':
  cli.run_job(train_and_evaluate)
