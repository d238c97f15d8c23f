r"""Fine-tunes a pretrained body on a task (classification, extractive QA, token tagging).

  python finetune.py --config=configs/finetune_cls.py --workdir=/tmp/ft_cls \
      --config.init_checkpoint=/tmp/lm_base [--config.init=random] [--config.train.steps=100]

--config.init_checkpoint is a train.py workdir or an HF BERT/GPT-2 directory. Resumes from the
latest checkpoint in --workdir; the best params by the validation metric are kept in
--workdir/best (`python eval.py --checkpoint=WORKDIR` then reports them on the test split).
SIGTERM/SIGINT save a checkpoint at the next step boundary and exit cleanly.
"""

from absl import flags
from ml_collections import config_flags

from lm import cli
from lm import distributed
from lm.jobs import finetune
from lm import metrics
from lm import report

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Fine-tuning config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, best/, tokenizer, metrics.jsonl, TensorBoard.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  distributed.initialize()
  report.check(FLAGS.config)  # a missing optional tracker fails before any work
  out = finetune.run(FLAGS.config, FLAGS.workdir)
  print(
    metrics.format_table(
      {'best': out['best'], 'final': out['final']},
      f'{FLAGS.config.task} fine-tuning ({out["stopped"] or "finished"})',
    )
  )


if __name__ == '__main__':
  cli.run(main)
