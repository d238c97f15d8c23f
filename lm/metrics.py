"""Evaluation metrics as plain numpy/Python functions, plus the result table and JSON file.

Classification: accuracy and per-class / macro precision, recall, F1 with scikit-learn's
conventions (macro = unweighted mean over the labels; a class never predicted has precision
0, one never present has recall 0, as sklearn with `zero_division=0`). QA: exact match and
token F1 exactly as the official SQuAD v1.1 `evaluate-v1.1.py` (lowercase, strip punctuation,
drop the articles a/an/the, collapse whitespace; max over the ground truths; percentages).
Language models: perplexity = exp(mean token negative log-likelihood). Generated text: ROUGE-1/2/L
F-measure (rouge-score, Porter stemmer) and corpus BLEU (sacrebleu, its default 13a tokenizer),
both on a 0-100 scale, through the libraries themselves.
"""

import collections
import json
import math
import os
import re
import string
from typing import Iterable, Optional, Sequence

import numpy as np


# ------------------------------------------------------------------------------------------------
# Generated text.

ROUGE_TYPES = ('rouge1', 'rouge2', 'rougeL')


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict:
  """Mean ROUGE-1/2/L F-measure x 100 over prediction/reference pairs (rouge-score with the
  Porter stemmer, as summarization papers report it)."""
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top

  scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
  scores = [scorer.score(r, p) for p, r in zip(predictions, references, strict=True)]
  return {k: 100 * mean(s[k].fmeasure for s in scores) for k in ROUGE_TYPES}


def bleu(predictions: Sequence[str], references) -> float:
  """Corpus BLEU (sacrebleu); `references[i]` is one string or a list of strings for
  predictions[i] (every prediction the same number)."""
  import sacrebleu  # pylint: disable=g-import-not-at-top

  refs = [[r] if isinstance(r, str) else list(r) for r in references]
  if len(refs) != len(predictions) or len({len(r) for r in refs}) > 1:
    raise ValueError('bleu: one reference (or the same number of them) per prediction.')
  return float(sacrebleu.corpus_bleu(list(predictions), [list(s) for s in zip(*refs)]).score)


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict:
  return {**rouge(predictions, references), 'bleu': bleu(predictions, references)}


# ------------------------------------------------------------------------------------------------
# Classification.


_SENTENCE = re.compile(r'(?<=[.!?])\s+')


def lead_sentence(text: str) -> str:
  """The lead baseline of summarization and extractive QA: the text's first sentence."""
  return _SENTENCE.split(' '.join(text.split()), maxsplit=1)[0]


def confusion_matrix(labels, predictions, num_labels: int) -> np.ndarray:
  """[true, predicted] counts."""
  labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
  m = np.zeros((num_labels, num_labels), np.int64)
  np.add.at(m, (labels, predictions), 1)
  return m


def classification_metrics(
  labels, predictions, num_labels: Optional[int] = None, label_ids: Optional[Sequence[int]] = None
) -> dict:
  """accuracy and macro precision/recall/F1 over `label_ids` (default: every label that
  occurs in labels or predictions, as sklearn's default `labels=None`)."""
  labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
  if labels.shape != predictions.shape:
    raise ValueError(f'labels {labels.shape} and predictions {predictions.shape} differ in shape.')
  if labels.size == 0:
    return {'accuracy': 0.0, 'precision': 0.0, 'recall': 0.0, 'f1': 0.0, 'count': 0}
  n = int(max(labels.max(), predictions.max()) + 1) if num_labels is None else num_labels
  m = confusion_matrix(labels, predictions, max(n, int(max(labels.max(), predictions.max())) + 1))
  if label_ids is None:
    label_ids = np.union1d(labels, predictions)
  label_ids = np.asarray(label_ids, np.int64)
  tp = np.diag(m)[label_ids].astype(np.float64)
  predicted = m.sum(0)[label_ids].astype(np.float64)
  actual = m.sum(1)[label_ids].astype(np.float64)
  precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
  recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
  denom = precision + recall
  f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
  return {
    'accuracy': float(np.mean(labels == predictions)),
    'precision': float(precision.mean()) if len(label_ids) else 0.0,
    'recall': float(recall.mean()) if len(label_ids) else 0.0,
    'f1': float(f1.mean()) if len(label_ids) else 0.0,
    'count': int(labels.size),
  }


# ------------------------------------------------------------------------------------------------
# SQuAD v1.1 (the official evaluate-v1.1.py logic).


def normalize_answer(s: str) -> str:
  """Lower text and remove punctuation, articles and extra whitespace."""
  s = s.lower()
  exclude = set(string.punctuation)
  s = ''.join(ch for ch in s if ch not in exclude)
  s = re.sub(r'\b(a|an|the)\b', ' ', s)
  return ' '.join(s.split())


def squad_f1(prediction: str, ground_truth: str) -> float:
  pred_tokens = normalize_answer(prediction).split()
  truth_tokens = normalize_answer(ground_truth).split()
  common = collections.Counter(pred_tokens) & collections.Counter(truth_tokens)
  num_same = sum(common.values())
  if num_same == 0:
    return 0.0
  precision = num_same / len(pred_tokens)
  recall = num_same / len(truth_tokens)
  return 2 * precision * recall / (precision + recall)


def squad_exact_match(prediction: str, ground_truth: str) -> float:
  return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def squad_metrics(predictions: dict, answers: dict) -> dict:
  """predictions {id: text}, answers {id: [texts]} -> {'exact_match', 'f1'} in percent.

  An id without a prediction scores 0 (the official script warns and counts it as wrong)."""
  em = f1 = 0.0
  for qid, truths in answers.items():
    if qid not in predictions:
      continue
    pred = predictions[qid]
    em += max(squad_exact_match(pred, t) for t in truths)
    f1 += max(squad_f1(pred, t) for t in truths)
  n = max(len(answers), 1)
  return {'exact_match': 100.0 * em / n, 'f1': 100.0 * f1 / n, 'count': len(answers)}


# ------------------------------------------------------------------------------------------------
# Language models.


def perplexity(mean_nll: float) -> float:
  return float(math.exp(min(mean_nll, 700.0)))


# ------------------------------------------------------------------------------------------------
# Reporting.


def format_table(results: dict, title: str = '') -> str:
  """Two-column text table of scalar results (nested dicts are flattened with '/')."""
  flat = _flatten(results)
  rows = [(k, _fmt(v)) for k, v in flat.items()]
  width = max([len(k) for k, _ in rows] + [6])
  vwidth = max([len(v) for _, v in rows] + [5])
  line = '+' + '-' * (width + 2) + '+' + '-' * (vwidth + 2) + '+'
  out = [title] if title else []
  out += [line, f'| {"metric":<{width}} | {"value":>{vwidth}} |', line]
  out += [f'| {k:<{width}} | {v:>{vwidth}} |' for k, v in rows]
  out.append(line)
  return '\n'.join(out)


def write_json(path: str, results: dict) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.{os.getpid()}.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(results, f, indent=2, sort_keys=True, default=_json_default)
  os.replace(tmp, path)
  return path


def _json_default(x):
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating,)):
    return float(x)
  if isinstance(x, np.ndarray):
    return x.tolist()
  raise TypeError(f'{type(x).__name__} is not JSON serialisable')


def _flatten(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    key = f'{prefix}{k}'
    if isinstance(v, dict):
      out.update(_flatten(v, key + '/'))
    elif isinstance(v, (int, float, np.integer, np.floating, str, bool)):
      out[key] = v
  return out


def _fmt(v) -> str:
  if isinstance(v, str):
    return v
  if isinstance(v, (bool, int, np.integer)):
    return str(int(v))
  v = float(v)
  if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
    return f'{v:.4e}'
  return f'{v:.4f}'


def mean(xs: Iterable[float]) -> float:
  xs = list(xs)
  return float(sum(xs) / len(xs)) if xs else 0.0
