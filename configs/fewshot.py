r"""Few-shot (in-context) classification with a trained causal LM: demonstration selection
strategies x number of demonstrations k (lm/icl/). Offline default task: which part of the
Python docs a pydoc topic paragraph is from (lm/tasks/data.py), pool from its train split, test
examples from its test split (none of it pretraining text: lm/data/python_docs.py).

  python train.py --config=configs/gpt_base.py --workdir=/tmp/lm_gpt
  python eval.py --config=configs/fewshot.py --checkpoint=/tmp/lm_gpt
  # smaller / other choices:
  python eval.py --config=configs/fewshot.py --checkpoint=/tmp/lm_gpt \
      --config.fewshot.num_test=20 --config.fewshot.strategies=random,similarity \
      --config.fewshot.ks=0,1,4 --config.fewshot.score=sum

Local files: --config.data.source=files --config.data.files=pool.tsv
  --config.data.test_files=test.tsv (label<TAB>text, or JSONL; see lm/tasks/data.py).
Writes CHECKPOINT/fewshot_results.json (or --output): accuracies plus, per test example, the
pool indices each strategy chose for every k and run, its prediction and label scores.
"""

import ml_collections

from lm import defaults


def get_config():
  c = ml_collections.ConfigDict()
  c.mode = 'fewshot'  # eval.py: dispatches to lm.icl.evaluate
  c.task = 'classification'
  c.seed = 0  # pool/test sampling
  c.num_devices = 1  # scoring's rows split over the first N devices (0 = all; 1 fastest on CPU)
  c.output = ''  # '' = CHECKPOINT/fewshot_results.json

  # files / split: the demonstration pool; test_files / test_split (eval_files / eval_split with
  # eval.py --split=validation): the examples scored, hashed off the pool's data when not named
  c.data = ml_collections.ConfigDict(defaults.source_block(held_out=True, eval_split='validation'))
  c.data.max_examples = 0
  c.data.labels = ()  # label names; () = sorted labels found in the data

  f = c.fewshot = ml_collections.ConfigDict()
  # built-in names (lm/icl/strategies/), or the import path of your own strategy module
  f.strategies = ('random', 'similarity', 'diversity', 'difficulty', 'gradient')
  f.ks = (0, 1, 2, 4)
  f.num_test = 40  # test examples (random sample; 0 = all)
  f.pool_size = 100  # demonstration pool (random sample of the train split; 0 = all)
  f.seeds = (0, 1, 2)  # selection seeds (random, k-means) ...
  f.orderings = 1  # ... x random orderings of the chosen demos per seed = runs
  f.score = 'mean'  # 'mean' | 'sum' log-prob of the label's tokens
  f.difficulty = 'easy'  # 'easy': lowest LM loss first | 'hard': highest first
  f.gradient_params = 'last'  # 'last': ln_final + last block | 'all'
  f.gradient_dim = 0  # > 0: count-sketch the gradient to this many dimensions
  f.max_len = 0  # prompt tokens; 0 = the model's (capped at train seq_len)
  f.demo_tokens = 48  # per demonstration text, before sharing what max_len leaves
  f.query_tokens = 32  # of the test input (also what embeddings/gradients see)
  f.input_prefix = 'Text: '
  f.output_prefix = '\nTopic:'
  f.separator = '\n\n'
  f.verbalizers = ml_collections.ConfigDict()  # label -> word(s) scored; default the label
  f.bos = False  # prepend eos as a BOS (train.py's documents do not start so)
  f.batch_size = 16  # rows per jitted call
  return c
