r"""Pretrains a Transformer LM (BERT-style MLM+NSP or GPT-style causal LM).

  python train.py --config=configs/base.py --workdir=/tmp/lm_base [--config.train.steps=100]

  # continued pretraining: weights, architecture and tokenizer of a workdir or HF directory,
  # a fresh optimizer, new data (tokenized with that tokenizer)
  python train.py --config=configs/gpt_base.py --workdir=/tmp/lm_cont \
      --config.init_checkpoint=/tmp/lm_gpt --config.data.source=files --config.data.files=new/*.txt

Resumes from the latest checkpoint in --workdir (which wins over init_checkpoint once the run has
saved one). SIGTERM/SIGINT save a checkpoint at the next step boundary and exit cleanly.
"""

from absl import flags
from ml_collections import config_flags

from lm import cli
from lm.jobs import pretrain

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, tokenizer, metrics.jsonl and TensorBoard logs.')
flags.mark_flags_as_required(['config', 'workdir'])

if __name__ == '__main__':
  cli.run_job(pretrain.run)
