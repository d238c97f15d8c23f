r"""Fine-tunes a pretrained decoder from preference pairs: a reward model, or DPO / IPO.

  python dpo.py --config=configs/reward.py --workdir=/tmp/lm_rm  --config.init_checkpoint=/tmp/lm_gpt
  python dpo.py --config=configs/dpo.py    --workdir=/tmp/lm_dpo --config.init_checkpoint=/tmp/lm_gpt \
      [--config.loss=ipo] [--config.beta=0.1] [--config.data.source=files --config.data.files=F]

`config.objective` picks what is trained: 'reward' trains a Bradley-Terry reward model (decoder + scalar
head), 'dpo' trains the policy against a frozen reference whose log-probs are computed once
and cached in the workdir. Validation metrics are written at step 0 (before any update), every
eval_every steps and at the end; the test pairs are scored once, on the final params (the `test/`
rows of metrics.jsonl and the returned figures). Resumes from the latest checkpoint in --workdir;
SIGTERM/SIGINT save a checkpoint at the next step boundary and exit cleanly.
"""

from absl import flags
from ml_collections import config_flags

from lm import cli
from lm.jobs import dpo

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  'config', None, 'configs/dpo.py or configs/reward.py.', lock_config=True
)
flags.DEFINE_string(
  'workdir', None, 'Checkpoints, reference log-probs, metrics.jsonl, TensorBoard.'
)
flags.mark_flags_as_required(['config', 'workdir'])

if __name__ == '__main__':
  cli.run_job(dpo.run)
