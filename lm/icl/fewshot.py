r"""Few-shot classification with a causal LM: the strategy x k x run grid, its table and CLI.

A trained decoder (a train.py workdir or an HF GPT-2 directory) is prompted with k labelled
demonstrations from a pool (the train split) followed by the test input (the test split by
default; prompts.py), and each label is scored by the log-likelihood of its verbalizer tokens
(scoring.py). The demonstrations come from the strategies in ``config.fewshot.strategies``
(strategies/), over the features they declare (features.py), computed once per run.

Evaluation (`evaluate`): accuracy per strategy and k over `runs` = seeds x orderings; every run
shuffles the selected demonstrations with its own seed (k=0 has one run). Reported as mean and
std over runs; the JSON result file lists, per test example, each strategy's selected pool
indices (in prompt order) and prediction for every k and run, plus the pool's texts.

  python eval.py --config=configs/fewshot.py --checkpoint=/tmp/lm_gpt
"""

from __future__ import annotations

import os
import time
from typing import Optional, Sequence

import jax
import numpy as np

from lm import metrics
from lm import pretrained
from lm import sharding
from lm.icl import features as features_lib
from lm.icl import strategies as strategies_lib
from lm.icl.prompts import Prompter
from lm.icl.scoring import LM
from lm.tasks import data as task_data


def compute_features(
  lm: LM,
  prompter: Prompter,
  pool: Sequence[dict],
  queries: Sequence[dict],
  strategies: Sequence[str],
  options=None,
  seed: int = 0,
) -> features_lib.Features:
  """What `strategies` declare they need (their NEEDS), nothing more; `options` (the fewshot
  config) holds gradient_params and gradient_dim."""
  return features_lib.compute(
    lm, prompter, pool, queries, strategies_lib.needs(strategies), options, seed
  )


def _sample(examples, n: int, seed: int):
  if n and n < len(examples):
    idx = np.sort(np.random.default_rng(seed).choice(len(examples), n, replace=False))
    return [examples[i] for i in idx]
  return list(examples)


def _strategy_names(value) -> list[str]:
  """config.fewshot.strategies as names: `--config.fewshot.strategies=random,similarity`
  arrives as the one string 'random,similarity'."""
  value = [value] if isinstance(value, str) else value
  return [n.strip() for v in value for n in str(v).split(',') if n.strip()]


def _strategy_modules(names: Sequence[str]) -> dict:
  try:
    return {s: strategies_lib.get(s) for s in _strategy_names(names)}
  except ValueError as e:
    raise ValueError(f'fewshot.strategies: {e}') from None


def run_fewshot(lm: LM, prompter: Prompter, pool, test, fs, seed: int = 0) -> dict:
  """The strategy x k x run grid over `test` with demonstrations from `pool`; see `evaluate`."""
  strategies = _strategy_names(fs.strategies)
  modules = _strategy_modules(strategies)
  independent = {s: strategies_lib.query_independent(m) for s, m in modules.items()}
  ks = [int(k) for k in fs.ks]
  if any(k < 0 for k in ks):
    raise ValueError(f'fewshot.ks={tuple(ks)}: k must be >= 0.')
  runs = [(int(s), o) for s in fs.seeds for o in range(int(fs.orderings))]
  if not runs:
    raise ValueError('fewshot.seeds is empty or fewshot.orderings=0: nothing to run.')
  timing = {}
  t0 = time.time()
  prompter.warm([e['text'] for e in list(pool) + list(test)])
  feats = compute_features(lm, prompter, pool, test, strategies, fs, seed)
  timing['features_s'] = time.time() - t0

  # Every (strategy, k, run, test example) prompt; k=0 is strategy-independent: one run.
  cells, requests, cache = [], [], {}
  for k in ks:
    for strategy in ['zero-shot'] if k == 0 else strategies:
      for r, (s, o) in enumerate(runs if k else runs[:1]):
        for qi, ex in enumerate(test):
          if k == 0:
            chosen = np.zeros(0, np.int64)
          elif independent[strategy]:
            key = (strategy, k, s)
            if key not in cache:
              cache[key] = strategies_lib.choose(modules[strategy], k, feats, None, s, fs)
            chosen = cache[key]
          else:
            chosen = strategies_lib.choose(modules[strategy], k, feats, qi, s, fs)
          order = [
            int(chosen[j]) for j in np.random.default_rng([s, o, qi, k]).permutation(len(chosen))
          ]
          ids, kept = prompter.prompt(
            [(pool[j]['text'], pool[j]['label']) for j in order], ex['text']
          )
          order = order[len(order) - kept :]
          cells.append((strategy, k, r, qi, order, len(ids)))
          requests.append((ids, prompter.candidates))
  t0 = time.time()
  scores = lm.score_candidates(requests, fs.score)
  timing['scoring_s'] = time.time() - t0
  timing['prompts'] = len(requests)

  gold = [prompter.label_index[e['label']] for e in test]
  correct, kept = {}, {}
  examples = [
    {'index': qi, 'text': e['text'], 'label': e['label'], 'selections': {}}
    for qi, e in enumerate(test)
  ]
  for (strategy, k, r, qi, order, n_tok), sc in zip(cells, scores):
    pred = int(np.argmax(sc))
    correct.setdefault((strategy, k), {}).setdefault(r, []).append(pred == gold[qi])
    kept.setdefault((strategy, k), []).append(len(order))
    sel = examples[qi]['selections'].setdefault(strategy, {}).setdefault(str(k), [])
    sel.append(
      {
        'run': r,
        'seed': runs[r][0],
        'ordering': runs[r][1],
        'pool_indices': order,
        'prediction': prompter.labels[pred],
        'correct': bool(pred == gold[qi]),
        'prompt_tokens': n_tok,
        'scores': [round(float(x), 4) for x in sc],
      }
    )
  accuracy = {}
  for strategy in strategies:
    accuracy[strategy] = {}
    for k in ks:
      per_run = correct[('zero-shot', 0) if k == 0 else (strategy, k)]
      accs = [float(np.mean(v)) for _, v in sorted(per_run.items())]
      accuracy[strategy][str(k)] = {
        'mean': float(np.mean(accs)),
        'std': float(np.std(accs)),
        'runs': accs,
        'demos_in_prompt': float(np.mean(kept[('zero-shot', 0) if k == 0 else (strategy, k)])),
      }
  counts = np.bincount(gold, minlength=len(prompter.labels))
  return {
    'accuracy': accuracy,
    'majority_baseline': float(counts.max() / max(len(gold), 1)),
    'strategies': strategies,
    'ks': ks,
    'runs': len(runs),
    'seeds': [int(s) for s in fs.seeds],
    'orderings': int(fs.orderings),
    'labels': list(prompter.labels),
    'verbalizers': list(prompter.verbalizers),
    'score': fs.score,
    'difficulty': fs.difficulty,
    'gradient_params': fs.gradient_params,
    'gradient_dim': int(fs.gradient_dim),
    'max_len': prompter.max_len,
    'num_test': len(test),
    'pool_size': len(pool),
    'timing': timing,
    'pool': [{'index': i, 'label': e['label'], 'text': e['text']} for i, e in enumerate(pool)],
    'examples': examples,
  }


def evaluate(config, checkpoint: str, output: Optional[str] = None, split: str = 'test') -> dict:
  """Few-shot accuracy of the causal LM at `checkpoint` per strategy and k (configs/fewshot.py)
  on `split` ('test', or 'validation' when choosing settings), demonstrations from train.

  Writes the JSON result (default CHECKPOINT/fewshot_results.json, or `config.output`) and
  returns it; `format_table(result)` renders the strategy x k table.
  """
  fs = config.fewshot
  _strategy_modules(fs.strategies)  # a misspelt name fails before the checkpoint loads
  if config.get('task', 'classification') != 'classification':
    raise ValueError(f"task={config.task!r}: few-shot evaluation covers 'classification'.")
  n = int(config.get('num_devices', 1))
  mesh = sharding.make_mesh((-1, 1, 1), devices=jax.devices()[:n] if n > 0 else None)
  pre = pretrained.load(checkpoint, mesh)
  if pre.kind != 'decoder':
    raise ValueError(
      f'{checkpoint} holds an {pre.kind}: few-shot prompting needs a causal LM '
      '(train.py --config=configs/gpt_base.py, or an HF GPT-2 directory).'
    )
  if pre.tokenizer is None:
    raise ValueError(f'{checkpoint} has no tokenizer (tokenizer.json or vocab.json).')
  tok = pre.tokenizer
  max_len = int(fs.max_len) or pre.cfg.max_len
  if not int(fs.max_len) and pre.config is not None and 'data' in pre.config:
    max_len = min(max_len, int(pre.config.data.get('seq_len', max_len)))  # positions trained
  max_len = min(max_len, pre.cfg.max_len)

  if split not in ('test', 'validation'):
    raise ValueError(f"split={split!r}: few-shot scores 'test' or 'validation'.")
  pool_all, _ = task_data.load_examples('classification', config.data, 'train')
  test_all, _ = task_data.load_examples('classification', config.data, split)
  if not pool_all or not test_all:
    raise ValueError(f'few-shot evaluation needs both a train (pool) and a {split} split.')
  pool = _sample(pool_all, int(fs.pool_size), config.seed)
  test = _sample(test_all, int(fs.num_test), config.seed + 1)
  labels = list(config.data.labels) or sorted({e['label'] for e in pool_all + test_all})
  unknown = {e['label'] for e in pool + test} - set(labels)
  if unknown:
    raise ValueError(f'labels {sorted(unknown)} are not in data.labels={tuple(labels)}.')
  verbal = dict(fs.verbalizers) if fs.verbalizers else {}
  prompter = Prompter(
    tok,
    labels,
    [verbal.get(l, l) for l in labels],
    max_len,
    input_prefix=fs.input_prefix,
    output_prefix=fs.output_prefix,
    separator=fs.separator,
    demo_tokens=int(fs.demo_tokens),
    query_tokens=int(fs.query_tokens),
    bos=bool(fs.bos),
  )
  pad_id = tok.pad_id if tok.pad_id is not None else (tok.eos_id or 0)
  with sharding.use(mesh):
    lm = LM(pre.model, pre.params, pad_id, max_len, int(fs.batch_size), mesh)
    result = run_fewshot(lm, prompter, pool, test, fs, config.seed)
  result = {
    'checkpoint': os.path.abspath(checkpoint),
    'step': pre.step,
    'data_source': config.data.source,
    'split': split,
    **result,
  }
  output = output or config.get('output') or os.path.join(checkpoint, 'fewshot_results.json')
  result['output'] = os.path.abspath(output)
  if jax.process_index() == 0:
    metrics.write_json(output, result)
  return result


def format_table(result: dict) -> str:
  """Strategies x k: accuracy mean ± std over runs."""
  ks = result['ks']
  cells = [
    [
      f'{result["accuracy"][s][str(k)]["mean"]:.3f} ± {result["accuracy"][s][str(k)]["std"]:.3f}'
      for k in ks
    ]
    for s in result['strategies']
  ]
  heads = ['strategy'] + [f'k={k}' for k in ks]
  w = [max(len(heads[0]), *(len(s) for s in result['strategies']))]
  w += [max(len(heads[i + 1]), *(len(c[i]) for c in cells)) for i in range(len(ks))]
  line = '+' + '+'.join('-' * (x + 2) for x in w) + '+'
  row = lambda vals: (
    '| '
    + ' | '.join(f'{v:<{w[0]}}' if i == 0 else f'{v:>{w[i]}}' for i, v in enumerate(vals))
    + ' |'
  )
  out = [
    f'few-shot accuracy, mean ± std over {result["runs"]} run(s) (seeds x orderings; '
    f'k=0 is one zero-shot run): {result["num_test"]} {result.get("split", "test")} examples, pool '
    f'{result["pool_size"]}, score = {result["score"]} label log-prob',
    line,
    row(heads),
    line,
  ]
  out += [row([s] + c) for s, c in zip(result['strategies'], cells)]
  short = []
  for k in ks:
    got = min(result['accuracy'][s][str(k)].get('demos_in_prompt', k) for s in result['strategies'])
    if got < k:
      short.append(f'k={k}: {got:.1f}')
  out.append(line)
  if short:
    out.append(
      f'demonstrations that fit max_len={result["max_len"]} (fewest, mean over prompts): '
      + ', '.join(short)
    )
  out += [
    f'majority-class baseline {result["majority_baseline"]:.3f}; '
    f'{len(result["labels"])} labels: {", ".join(result["labels"])}'
  ]
  return '\n'.join(out)


def main(argv):
  """python -m lm.icl --config=configs/fewshot.py --checkpoint=WORKDIR (same as eval.py's);
  the flags are defined in __main__.py."""
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top

  f = flags.FLAGS
  result = evaluate(f.config, f.checkpoint, f.output, f.split)
  print(format_table(result))
  print(f'wrote {result["output"]}')
