"""python -m lm.icl --config=configs/fewshot.py --checkpoint=WORKDIR [--output=FILE]

Few-shot accuracy per demonstration strategy and k; the same as eval.py with that config.
"""

import sys

from absl import flags
from ml_collections import config_flags

from lm import cli
from lm.icl import fewshot

config_flags.DEFINE_config_file('config', None, 'configs/fewshot.py', lock_config=True)
flags.DEFINE_string('checkpoint', None, 'train.py workdir or HF GPT-2 directory.')
flags.DEFINE_string('output', None, 'JSON result file (default CHECKPOINT/fewshot_results.json).')
flags.DEFINE_enum('split', 'test', ['test', 'validation'], 'The split scored (pool: train).')
flags.mark_flags_as_required(['config', 'checkpoint'])

if __name__ == '__main__':
  sys.argv[0] = 'lm.icl'  # errors read 'lm.icl: error: ...', not '__main__.py: ...'
  cli.run(fewshot.main)
