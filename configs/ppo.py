"""PPO (or GRPO / RLOO) of a decoder against a trained reward model.

  python dpo.py --config=configs/reward.py --workdir=/tmp/lm_rm --config.init_checkpoint=/tmp/lm_gpt
  python ppo.py --config=configs/ppo.py --workdir=/tmp/lm_ppo --config.init_checkpoint=/tmp/lm_gpt \
      --config.reward_model=/tmp/lm_rm [--config.algorithm=rloo --config.group_size=4]

`init_checkpoint` is the starting policy: a train.py, dpo.py (DPO) or ppo.py workdir, or an HF GPT-2
directory; the reward model must share its tokenizer. Prompts are those of the preference data
(offline default: first sentences of held-out Python docs paragraphs).
"""

from lm import defaults


def get_config():
  c = defaults.rl()
  return c
