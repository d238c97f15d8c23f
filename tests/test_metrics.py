"""lm.metrics against scikit-learn and the official SQuAD v1.1 evaluation logic; lm.report's
TensorBoard events against TensorFlow's reader."""

import collections
import json
import math
import re
import string
import subprocess
import sys

import numpy as np
import pytest
from sklearn import metrics as skm

from conftest import ROOT
from lm import metrics


# The official evaluate-v1.1.py functions, verbatim apart from style: the independent reference.
def _official_normalize(s):
  def remove_articles(text):
    return re.sub(r'\b(a|an|the)\b', ' ', text)

  def white_space_fix(text):
    return ' '.join(text.split())

  def remove_punc(text):
    exclude = set(string.punctuation)
    return ''.join(ch for ch in text if ch not in exclude)

  return white_space_fix(remove_articles(remove_punc(s.lower())))


def _official_f1(prediction, ground_truth):
  prediction_tokens = _official_normalize(prediction).split()
  ground_truth_tokens = _official_normalize(ground_truth).split()
  common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
  num_same = sum(common.values())
  if num_same == 0:
    return 0
  precision = 1.0 * num_same / len(prediction_tokens)
  recall = 1.0 * num_same / len(ground_truth_tokens)
  return (2 * precision * recall) / (precision + recall)


CASES = [  # (prediction, ground truths)
  ('The Eiffel Tower', ['Eiffel Tower', 'the tower']),
  ('an apple a day', ['apple day']),
  ('Denver Broncos!', ['Denver Broncos', 'Broncos']),
  ('in 1999,  the year', ['1999']),
  ('', ['something']),
  ('the', ['a']),  # both normalise to '': EM 1, F1 0 (no common tokens)
  ('Théâtre du Châtelet.', ['théâtre du châtelet']),
  ('red red blue', ['red blue blue']),
]


@pytest.mark.parametrize('pred,truths', CASES)
def test_squad_matches_official(pred, truths):
  assert metrics.normalize_answer(pred) == _official_normalize(pred)
  em = max(float(_official_normalize(pred) == _official_normalize(t)) for t in truths)
  f1 = max(_official_f1(pred, t) for t in truths)
  assert max(metrics.squad_exact_match(pred, t) for t in truths) == em
  assert max(metrics.squad_f1(pred, t) for t in truths) == pytest.approx(f1)


def test_squad_hand_values():
  assert metrics.normalize_answer('  The  Quick, brown fox!! ') == 'quick brown fox'
  assert metrics.squad_f1('red red blue', 'red blue blue') == pytest.approx(2 / 3)
  assert metrics.squad_f1('w x c d', 'c d e') == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
  preds = {q: p for q, (p, _) in enumerate(CASES)}
  answers = {q: t for q, (_, t) in enumerate(CASES)}
  answers[99] = ['missing prediction counts as wrong']
  out = metrics.squad_metrics(preds, answers)
  em = sum(
    max(float(_official_normalize(p) == _official_normalize(t)) for t in ts) for p, ts in CASES
  )
  f1 = sum(max(_official_f1(p, t) for t in ts) for p, ts in CASES)
  assert out['exact_match'] == pytest.approx(100 * em / 9)
  assert out['f1'] == pytest.approx(100 * f1 / 9)
  assert out['count'] == 9


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_classification_matches_sklearn(seed):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 4, 60)
  p = np.where(rng.random(60) < 0.6, y, rng.integers(0, 5, 60))  # label 4 only ever predicted
  got = metrics.classification_metrics(y, p)
  assert got['accuracy'] == pytest.approx(skm.accuracy_score(y, p))
  for k, fn in (
    ('precision', skm.precision_score),
    ('recall', skm.recall_score),
    ('f1', skm.f1_score),
  ):
    assert got[k] == pytest.approx(fn(y, p, average='macro', zero_division=0)), k
  # Restricted label set (as token classification uses: every tag but O).
  got = metrics.classification_metrics(y, p, 5, label_ids=[1, 2, 3])
  assert got['f1'] == pytest.approx(
    skm.f1_score(y, p, labels=[1, 2, 3], average='macro', zero_division=0)
  )
  assert got['recall'] == pytest.approx(
    skm.recall_score(y, p, labels=[1, 2, 3], average='macro', zero_division=0)
  )


def test_classification_hand_case():
  y = [0, 0, 1, 1, 2]
  p = [0, 1, 1, 1, 0]
  got = metrics.classification_metrics(y, p, 3, label_ids=range(3))
  # class 0: P 1/2 R 1/2; class 1: P 2/3 R 1; class 2: P 0 (never predicted) R 0.
  assert got['accuracy'] == pytest.approx(0.6)
  assert got['precision'] == pytest.approx((0.5 + 2 / 3 + 0) / 3)
  assert got['recall'] == pytest.approx((0.5 + 1 + 0) / 3)
  assert got['f1'] == pytest.approx((0.5 + 0.8 + 0) / 3)
  np.testing.assert_array_equal(
    metrics.confusion_matrix(y, p, 3), skm.confusion_matrix(y, p, labels=[0, 1, 2])
  )


def test_perplexity_table_and_json(tmp_path):
  assert metrics.perplexity(math.log(7.0)) == pytest.approx(7.0)
  res = {'task': 'qa', 'exact_match': 50.0, 'nested': {'f1': np.float32(0.25)}, 'count': 3}
  table = metrics.format_table(res, 'title')
  assert 'nested/f1' in table and '50.0000' in table and table.startswith('title')
  path = metrics.write_json(str(tmp_path / 'r.json'), res)
  assert json.load(open(path))['nested']['f1'] == pytest.approx(0.25)


def test_rouge_matches_hand_counts_of_the_rouge_score_docstring_example():
  """rouge_scorer.RougeScorer's docstring example (target first, prediction second). Stemmed
  words: target 'the quick brown fox jump over the lazi dog' (9), prediction 'the quick brown dog
  jump on the log' (8). ROUGE-1: 6 shared (the x2, quick, brown, dog, jump) -> F = 2*6/(9+8).
  ROUGE-L: longest common subsequence 'the quick brown jump the' (5) -> F = 2*5/17.
  ROUGE-2: shared bigrams 'the quick', 'quick brown' -> P 2/7, R 2/8, F = 2*2/(7+8)."""
  got = metrics.rouge(
    ['The quick brown dog jumps on the log.'], ['The quick brown fox jumps over the lazy dog']
  )
  assert got == pytest.approx({'rouge1': 1200 / 17, 'rouge2': 400 / 15, 'rougeL': 1000 / 17})


def test_bleu_is_sacrebleus_documented_example():
  """sacrebleu's README: BLEU = 48.53 for these three hypotheses and two reference sets."""
  refs = [
    ['The dog bit the man.', 'It was not unexpected.', 'The man bit him first.'],
    ['The dog had bit the man.', 'No one was surprised.', 'The man had bitten the dog.'],
  ]
  hyps = ['The dog bit the man.', "It wasn't surprising.", 'The man had just bitten him.']
  assert round(metrics.bleu(hyps, list(zip(*refs))), 2) == 48.53
  with pytest.raises(ValueError, match='one reference'):
    metrics.bleu(hyps, refs[0][:2])


def test_writer_logs_scalars_and_text_to_tensorboard_without_torch(tmp_path):
  """report.Writer's event file (read back by TensorFlow's own reader) holds the scalars of
  metrics.jsonl and the text; the writing process never imports torch (tensorboardX would: ~1 s
  and ~0.3 GB a run)."""
  code = (
    'import sys; from lm import report; '
    f'w = report.Writer({str(tmp_path)!r}, 2); '
    "w.write(1, {'loss': 1.5, 'accuracy': 0.25}); w.write(2, {'loss': 0.75}, 'eval'); "
    "w.text(2, 'sample', 'the assert statement'); w.close(); print('torch' in sys.modules)"
  )
  out = subprocess.run(
    [sys.executable, '-c', code], capture_output=True, text=True, check=True, cwd=ROOT
  ).stdout
  assert out.splitlines()[-1] == 'False', out
  import tensorflow as tf  # the reference reader of event files

  (events,) = (tmp_path / 'tensorboard').iterdir()
  got = {}
  for e in tf.compat.v1.train.summary_iterator(str(events)):
    for v in e.summary.value:
      got[v.tag, e.step] = v.simple_value if v.HasField('simple_value') else v.tensor
  rows = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  want = {(k, r['step']): v for r in rows for k, v in r.items() if k not in ('step', 'time')}
  assert want == {('train/loss', 1): 1.5, ('train/accuracy', 1): 0.25, ('eval/loss', 2): 0.75}
  assert {k: got[k] for k in want} == want
  assert b'the assert statement' in got['sample/text_summary', 2].string_val[0]
