r"""Text-to-text fine-tuning of a decoder or a T5: SFT on chat / prompt-response data,
summarization, translation.

  python sft.py --config=configs/sft.py --workdir=/tmp/lm_sft --config.init_checkpoint=/tmp/lm_gpt
  python sft.py --config=configs/summarize.py --workdir=/tmp/lm_sum \
      --config.init_checkpoint=/tmp/lm_gpt [--config.data.source=files --config.data.files=F]
  python sft.py --config=configs/t5_finetune.py[:translate] --workdir=/tmp/lm_t5_sum \
      --config.init_checkpoint=/tmp/lm_t5 [--config.init=random]

One job (lm/jobs/sft.py): prompt -> target with the loss on the target tokens only (a decoder: packed
rows with document masks; a T5: the input in the encoder, the target from the decoder), validation response loss every eval_every steps (the lowest kept in
WORKDIR/best). `python eval.py --checkpoint=WORKDIR` then reports the test split: response loss,
ROUGE / BLEU of generations, and the lead baseline for summarization. The workdir is a model
for generate.py and an init_checkpoint. Resumes from the latest checkpoint in --workdir;
SIGTERM/SIGINT save a checkpoint at the next step boundary and exit cleanly.
"""

from absl import flags
from ml_collections import config_flags

from lm import cli
from lm.jobs import sft

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  'config', None, 'configs/sft.py, summarize.py or t5_finetune.py.', lock_config=True
)
flags.DEFINE_string('workdir', None, 'Checkpoints, best/, tokenizer, metrics.jsonl, TensorBoard.')
flags.mark_flags_as_required(['config', 'workdir'])


if __name__ == '__main__':
  cli.run_job(sft.run)
