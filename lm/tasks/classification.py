"""Sequence classification, single sentences or pairs (GLUE-style), on the pooled output.

Rows are framed by `lm.tasks.Specials` and truncated longest-first to data.max_len.
Metrics: accuracy and macro precision/recall/F1 over all labels (lm.metrics).
"""
import jax
import jax.numpy as jnp
import numpy as np

from lm import metrics as metrics_lib
from lm import tasks
from lm.tasks import data as data_lib

HEAD = 'pooled'


def label_names(examples, given=None):
  if given:
    return list(given)
  found = {e['label'] for e in examples}
  if found <= set(data_lib.TOPIC_LABELS):
    return list(data_lib.TOPIC_LABELS)
  return sorted(found)


def featurize(examples, tok, labels, data_cfg):
  sp = tasks.Specials(tok)
  index = {l: i for i, l in enumerate(labels)}
  max_len = int(data_cfg.max_len)
  a_ids = tok.encode_batch([e['text'] for e in examples])
  b_texts = [e.get('text_b') for e in examples]
  b_ids = tok.encode_batch([t for t in b_texts if t is not None]) if any(
      t is not None for t in b_texts) else []
  b_iter = iter(b_ids)
  ids, types, label = [], [], []
  for e, a, bt in zip(examples, a_ids, b_texts):
    b = next(b_iter) if bt is not None else None
    a, b = tasks.truncate_pair(a, b, max_len - sp.overhead(b is not None))
    i, t, _ = sp.frame(a, b)
    ids.append(i)
    types.append(t)
    if e['label'] not in index:
      raise ValueError(f'label {e["label"]!r} is not among the labels {labels}: set '
                       'data.labels or check the data files.')
    label.append(index[e['label']])
  features = {
      'input_ids': tasks.pad_rows(ids, max_len, sp.pad),
      'token_type_ids': tasks.pad_rows(types, max_len, 0),
      'attention_mask': tasks.pad_rows([[1] * len(i) for i in ids], max_len, 0),
      'label': np.asarray(label, np.int32),
      'weight': np.ones(len(ids), np.float32),
  }
  return features, None


def loss_sums(logits, batch):
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  nll = -jnp.take_along_axis(logp, batch['label'][:, None], axis=-1)[:, 0]
  correct = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)
  w = batch['weight']
  return jnp.sum(nll * w), jnp.sum(w), jnp.sum(correct * w)


def score(logits, features, aux, examples, labels, data_cfg):
  del aux, data_cfg
  pred = np.argmax(np.asarray(logits), -1)
  m = metrics_lib.classification_metrics(features['label'], pred, len(labels),
                                         label_ids=range(len(labels)))
  predictions = [{'text': e['text'], 'label': e['label'], 'prediction': labels[int(p)]}
                 for e, p in zip(examples, pred)]
  return m, predictions
