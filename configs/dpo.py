"""DPO (or IPO) fine-tuning of a pretrained decoder on preference pairs.

  python dpo.py --config=configs/dpo.py --workdir=/tmp/lm_dpo --config.init_checkpoint=/tmp/lm_gpt
  python dpo.py --config=configs/dpo.py --workdir=/tmp/lm_ipo --config.init_checkpoint=/tmp/lm_gpt \
      --config.loss=ipo --config.beta=0.5

`init_checkpoint` is a train.py --workdir (clm) or a HuggingFace GPT-2 directory with its
tokenizer; `reference` (default: the same model) is the frozen reference. Its log-probs on
every pair are computed once and cached in the workdir (reference_logps-<hash>.npz).
Preference data: see lm/preference.py (offline default 'python_docs', JSON-lines files with
data.source='files', or data.source='tfds' with data.tfds_name and data.data_dir).
"""

from lm import defaults


def get_config():
  c = defaults.preference()
  c.objective = 'dpo'
  c.update(loss='dpo', beta=0.1)
  c.train.update(lr=1e-4, steps=200, warmup_steps=10, schedule='cosine', weight_decay=0.0)
  return c
