"""configs/gpt_base.py's job on a weighted mixture: Python's docs (0.7) and your text files (0.3).

  python train.py --config=configs/gpt_mixture.py --workdir=/tmp/lm_mix \\
      --config.data.mixture.text.files='corpus/*.txt'

Each source is prepared once into its own shards, with the tokenizer trained on the first
(`docs`); rows pick their source by the step's weights (lm/data/mixture.py). To change the weights
from step S (when resuming there), add `(S, name, weight)` triples:
`--config.data.mixture_schedule="((300, 'docs', 0.5), (300, 'text', 0.5))"`. Eval reports each
source (`eval/docs/loss`, `eval/text/loss`) and both pooled (`eval/loss`).
"""

import ml_collections

from configs import gpt_base


def get_config():
  c = gpt_base.get_config()
  c.data.mixture = ml_collections.ConfigDict(
    dict(
      docs=dict(source='python_docs', weight=0.7),
      text=dict(source='files', files='', weight=0.3),
    )
  )
  return c
