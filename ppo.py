r"""RL fine-tuning of a decoder against a trained reward model: PPO, GRPO or RLOO.

  python ppo.py --config=configs/ppo.py --workdir=/tmp/lm_ppo --config.init_checkpoint=/tmp/lm_gpt \
      --config.reward_model=/tmp/lm_rm [--config.algorithm=rloo --config.group_size=4]

Each step of the shared loop samples train.batch_size responses to training prompts from the
current policy (jitted KV-cache decoding), scores them with the frozen reward model and the
frozen reference, and makes train.epochs_per_batch x train.minibatches updates on that rollout
(lm/jobs/ppo.py). Held-out figures (one sample per prompt, fixed draws): the reward model's mean
score and the mean per-sequence KL to the reference, on validation prompts at step 0, every
eval_every steps and at the end, and on test prompts once at the end, beside best-of-n sampling
from the starting policy (`test/best_of_*`). Training stops, saving first, at the first
evaluation whose KL exceeds kl_budget. Resumes from the latest checkpoint in --workdir.
"""

from absl import flags
from ml_collections import config_flags

from lm import cli
from lm.jobs import ppo

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'configs/ppo.py.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, metrics.jsonl, TensorBoard.')
flags.mark_flags_as_required(['config', 'workdir'])

if __name__ == '__main__':
  cli.run_job(ppo.run)
