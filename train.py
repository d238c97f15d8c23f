r"""Pretrains a Transformer LM (BERT-style MLM+NSP or GPT-style causal LM).

  python train.py --config=configs/base.py --workdir=/tmp/lm_base [--config.train.steps=100]

Resumes from the latest checkpoint in --workdir. SIGTERM/SIGINT save a checkpoint at the
next step boundary and exit cleanly.
"""
import os
import time

from absl import flags
import jax
from jax.experimental import multihost_utils
from ml_collections import config_flags

from lm import checkpoint
from lm import cli
from lm import distributed
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
  eval_corpus = shards.open_eval(data_dir, manifest)
  train_data = pretrain.make_batcher(config, train_corpus, tok, config.seed)
  eval_data = pretrain.make_batcher(config, eval_corpus, tok, config.seed + 1)

  # Model, optimizer and state, initialised straight into their shardings.
  mesh = sharding.make_mesh(config.mesh_shape)
  model = objectives.make_model(config, tok.vocab_size)
  tx = optim.make(config.train)
  state, state_sh = trainer.create_state(model, tx, mesh, config.seed, objectives.init_inputs(config))
  print(f'{config.objective}: {trainer.param_count(state.params):,} params, mesh '
        f'{dict(mesh.shape)}, {pc} process(es), vocab {tok.vocab_size}')

  ckpt = checkpoint.for_run(workdir, config)
  state, last_ckpt = ckpt.resume(state)
  start = int(state.step)

  train_step = trainer.make_train_step(config, model, tx, state_sh, mesh)
  eval_step = trainer.make_eval_step(config, model, state_sh.params, mesh)
  eval_batches = lambda: (sharding.shard_batch(eval_data.get_batch(i, pi, pc), mesh)
                          for i in range(config.eval_batches))
  writer = report.Writer(workdir, config.train.steps)
  stop = trainer.StopFlag().install()
  tokens_per_step = config.train.batch_size * config.data.seq_len
  t0, steps_timed = time.time(), 0
  result = {'eval': {}, 'sample': None}

  with ckpt:  # pending async saves land even if the loop raises
    for step in range(start, config.train.steps):
      batch = sharding.shard_batch(train_data.get_batch(step, pi, pc), mesh)
      state, metrics = train_step(state, batch)
      steps_timed += 1
      done = step + 1
      if done % config.log_every == 0 or done == config.train.steps:
        metrics = jax.device_get(metrics)
        trainer.check_finite(metrics, done, last_ckpt)
        elapsed = time.time() - t0
        writer.write(done, {**metrics, 'tokens_per_sec': steps_timed * tokens_per_step / elapsed})
        t0, steps_timed = time.time(), 0
      if done % config.eval_every == 0 or done == config.train.steps:
        result['eval'] = trainer.evaluate(eval_step, state.params, eval_batches(), stop)
        writer.write(done, result['eval'], 'eval')
      if ckpt.should_save(done) or stop.requested or done == config.train.steps:
        trainer.check_finite(jax.device_get(metrics), done, last_ckpt)  # never save a NaN state
        ckpt.save(done, state, {'step': done, 'data_position': done, 'config': config.to_json()},
                  force=True)
        last_ckpt = done
      if stop.requested:
        print(f'{stop.signal}: saved step {done}, exiting.')
        break

  if not stop.requested:
    params = state.params if pc == 1 else multihost_utils.process_allgather(state.params, tiled=True)
    if pi == 0:
      result['sample'] = sample.sample(config.objective, model, params, tok,
                                       config.sample_prompt, config.sample_tokens)
      writer.text(int(state.step), 'sample', result['sample'])
  writer.close()
  return {'step': int(state.step), **result}


def _keep_tokenizer(tok, workdir: str, data_dir: str):
  """The run's tokenizer.json beside its checkpoints (what loading a workdir reads)."""
  path, text = os.path.join(workdir, 'tokenizer.json'), tok.hf.to_str()
  if os.path.isfile(path):
    with open(path, encoding='utf-8') as f:
      if f.read() != text:
        raise ValueError(f'{workdir} was trained with another tokenizer than the prepared data in '
                         f'{data_dir}: use a new --workdir, or pass --config.data.tokenizer.path='
                         f'{path} to prepare the data with the run\'s own tokenizer.')
    return
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text)


def main(argv):
  del argv
  distributed.initialize()  # before any other JAX call
  train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  cli.run(main)
