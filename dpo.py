r"""Fine-tunes a pretrained decoder from preference pairs: a reward model, or DPO / IPO.

  python dpo.py --config=configs/reward.py --workdir=/tmp/lm_rm  --config.pretrained=/tmp/lm_gpt
  python dpo.py --config=configs/dpo.py    --workdir=/tmp/lm_dpo --config.pretrained=/tmp/lm_gpt \
      [--config.loss=ipo] [--config.beta=0.1] [--config.data.source=files --config.data.files=F]

`config.task` picks the job: 'reward' trains a Bradley-Terry reward model (decoder + scalar
head), 'dpo' trains the policy against a frozen reference whose log-probs are computed once
and cached in the workdir. Validation metrics are written at step 0 (before any update), every
eval_every steps and at the end; the test pairs are scored once, on the final params (the `test/`
rows of metrics.jsonl and the returned figures). Resumes from the latest checkpoint in --workdir;
SIGTERM/SIGINT save a checkpoint at the next step boundary and exit cleanly.
"""

import dataclasses

from absl import flags
import jax
from ml_collections import config_flags

from lm import cli
from lm import loop
from lm import optim
from lm import preference
from lm import pretrained
from lm import report
from lm import rlhf
from lm import sharding
from lm import trainer
from lm.data import sources

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  'config', None, 'configs/dpo.py or configs/reward.py.', lock_config=True
)
flags.DEFINE_string(
  'workdir', None, 'Checkpoints, reference log-probs, metrics.jsonl, TensorBoard.'
)
flags.mark_flags_as_required(['config', 'workdir'])


def train(config, workdir: str) -> dict:
  """The whole run; notebooks call it with `get_config()` directly. Returns the last validation
  metrics and, under 'test', the final params' test metrics; the history is in
  WORKDIR/metrics.jsonl."""
  workdir = cli.writable_dir(workdir)
  if config.task not in ('reward', 'dpo'):
    raise ValueError(f"task={config.task!r}: use 'reward' (configs/reward.py) or 'dpo'.")
  if config.task == 'dpo' and config.loss not in rlhf.LOSSES:
    raise ValueError(f'loss={config.loss!r}: use one of {rlhf.LOSSES}.')
  if not config.pretrained:
    raise ValueError('pass --config.pretrained=DIR (a train.py --workdir or a HF GPT-2 directory).')
  pi, pc = jax.process_index(), jax.process_count()
  mesh = sharding.make_mesh(config.mesh_shape)

  # The pretrained decoder and its tokenizer; preference pairs tokenized with it.
  pre = pretrained.load(config.pretrained, mesh)
  if pre.kind != 'decoder' or pre.tokenizer is None:
    raise ValueError(
      f'{config.pretrained} is a {pre.kind} without/with tokenizer '
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
  if config.task == 'reward':
    model = rlhf.RewardModel(pre.cfg)
    state, state_sh = rlhf.create_state(
      model, tx, mesh, config.seed, rlhf.reward_init_inputs(seq_len), pre.params, 'decoder'
    )
  else:
    model = pre.model
    state, state_sh = rlhf.create_state(
      model, tx, mesh, config.seed, rlhf.policy_init_inputs(seq_len), pre.params
    )
  print(
    f'{config.task}: {trainer.param_count(state.params):,} params, mesh {dict(mesh.shape)}, '
    f'{len(pairs["train"])} training / {len(pairs["validation"])} validation / '
    f'{len(pairs["test"])} test pairs'
  )
  stop = loop.StopFlag().install()

  if config.task == 'dpo':  # the frozen reference, run once over every pair, then dropped
    data = {'train': train_data, 'validation': eval_data, 'test': test_data}
    data = {name: d for name, d in data.items() if name == 'train' or pairs[name]}
    if not rlhf.attach_reference_logps(
      config, model, state_sh.params, mesh, data, workdir, stop, loaded=pre
    ):
      print(f'{stop.signal}: stopped computing reference log-probs, exiting.')
      return
  del pre

  train_step = rlhf.make_train_step(config, model, tx, state_sh, mesh)
  eval_step = rlhf.make_eval_step(config, model, state_sh.params, mesh)

  def evaluate(params, data):
    batches = preference.eval_batches(data, config.eval_batch_size, pi, pc)
    return rlhf.evaluate(eval_step, params, (sharding.shard_batch(b, mesh) for b in batches), stop)

  writer = report.Writer(workdir, int(config.train.steps))
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
    evaluate=(lambda params: evaluate(params, eval_data)) if pairs['validation'] else None,
    meta=lambda step: {
      'task': config.task,
      'config': config.to_json(),
      'model': dataclasses.asdict(model.cfg),
      'data_position': step,
    },
    rate=('pairs_per_sec', config.train.batch_size),
  )
  test = {} if fit.stopped or not pairs['test'] else evaluate(fit.state.params, test_data)
  if test:
    writer.write(int(fit.state.step), test, 'test')
  writer.close()
  return {**fit.eval, 'test': test} if test else fit.eval


if __name__ == '__main__':
  cli.run_job(train)
