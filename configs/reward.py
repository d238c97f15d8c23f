"""A Bradley-Terry reward model: the pretrained decoder plus a scalar head on the last token.

  python dpo.py --config=configs/reward.py --workdir=/tmp/lm_rm --config.init_checkpoint=/tmp/lm_gpt

Reports pairwise accuracy (reward of chosen > reward of rejected) on held-out pairs.
"""

from lm import defaults


def get_config():
  c = defaults.preference()
  c.objective = 'reward'
  return c
