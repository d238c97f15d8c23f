"""In-context learning: demonstration selection and few-shot classification with a causal LM.

strategies/  one module per selection strategy (random, similarity, diversity, difficulty,
             gradient), found by name or import path: `strategies.get`, `select`
features.py  `Features` (embeddings, demonstration losses, gradients) and how each is computed
scoring.py   `LM`: embeddings, losses and label scoring (gradients.py: per-example gradients)
prompts.py   `Prompter`: demonstrations + test input as token ids within max_len
fewshot.py   the strategy x k x run grid (`run_fewshot`), `evaluate`, `format_table`; the CLI
             is ``python -m lm.icl`` or ``python eval.py --config=configs/fewshot.py``
"""

from lm.icl import strategies
from lm.icl.features import Features, cosine_rank
from lm.icl.fewshot import compute_features, evaluate, format_table, main, run_fewshot
from lm.icl.prompts import Prompter
from lm.icl.scoring import LM, pad
from lm.icl.strategies import QUERY_INDEPENDENT, STRATEGIES, select

__all__ = [
  'Features',
  'LM',
  'Prompter',
  'QUERY_INDEPENDENT',
  'STRATEGIES',
  'compute_features',
  'cosine_rank',
  'evaluate',
  'format_table',
  'main',
  'pad',
  'run_fewshot',
  'select',
  'strategies',
]
