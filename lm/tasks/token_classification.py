"""Token classification (NER/tagging style) on words: each word's first sub-token carries its
tag, the other sub-tokens are not scored (weight 0).

Metrics are per word: accuracy over all words, and macro precision/recall/F1 over every tag
except 'O' (the usual reading: the tags of interest). Words cut off by data.max_len count as
predicted 'O' (or the first label when there is no 'O').
"""
import jax
import jax.numpy as jnp
import numpy as np

from lm import metrics as metrics_lib
from lm import tasks
from lm.tasks import data as data_lib

HEAD = 'tokens'


def label_names(examples, given=None):
  if given:
    return list(given)
  found = {t for e in examples for t in e['tags']}
  if found <= set(data_lib.TOKEN_LABELS):
    return list(data_lib.TOKEN_LABELS)
  return (['O'] if 'O' in found else []) + sorted(found - {'O'})


def featurize(examples, tok, labels, data_cfg):
  sp = tasks.Specials(tok)
  index = {l: i for i, l in enumerate(labels)}
  max_len = int(data_cfg.max_len)
  budget = max_len - sp.overhead(False)
  ids, tag_rows, weight_rows, first_tok = [], [], [], []
  for e in examples:
    enc = tok.hf.encode(e['tokens'], is_pretokenized=True, add_special_tokens=False)
    word_ids = enc.word_ids[:budget]
    row_ids, _, _ = sp.frame(enc.ids[:budget])
    off = len(sp.prefix)
    tags = np.zeros(len(row_ids), np.int32)
    weights = np.zeros(len(row_ids), np.float32)
    firsts = np.full(len(e['tokens']), -1, np.int32)  # word -> token position (-1: truncated)
    prev = None
    for j, w in enumerate(word_ids):
      if w is not None and w != prev:
        tag = e['tags'][w]
        if tag not in index:
          raise ValueError(f'tag {tag!r} is not among the labels {labels}.')
        tags[off + j], weights[off + j], firsts[w] = index[tag], 1.0, off + j
      prev = w
    ids.append(row_ids)
    tag_rows.append(tags)
    weight_rows.append(weights)
    first_tok.append(firsts)
  features = {
      'input_ids': tasks.pad_rows(ids, max_len, sp.pad),
      'token_type_ids': np.zeros((len(ids), max_len), np.int32),
      'attention_mask': tasks.pad_rows([[1] * len(i) for i in ids], max_len, 0),
      'tags': tasks.pad_rows(tag_rows, max_len, 0),
      'tag_weights': tasks.pad_rows(weight_rows, max_len, 0.0, np.float32),
      'weight': np.ones(len(ids), np.float32),
  }
  return features, {'first_token': first_tok}


def loss_sums(logits, batch):
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  nll = -jnp.take_along_axis(logp, batch['tags'][..., None], axis=-1)[..., 0]
  correct = (jnp.argmax(logits, -1) == batch['tags']).astype(jnp.float32)
  w = batch['tag_weights'] * batch['weight'][:, None]
  return jnp.sum(nll * w), jnp.sum(w), jnp.sum(correct * w)


def score(logits, features, aux, examples, labels, data_cfg):
  del features, data_cfg
  pred_tok = np.argmax(np.asarray(logits), -1)
  fallback = labels.index('O') if 'O' in labels else 0
  index = {l: i for i, l in enumerate(labels)}
  y_true, y_pred, predictions = [], [], []
  for i, (e, firsts) in enumerate(zip(examples, aux['first_token'])):
    p = [int(pred_tok[i, t]) if t >= 0 else fallback for t in firsts]
    y_true += [index[t] for t in e['tags']]
    y_pred += p
    predictions.append({'tokens': e['tokens'], 'tags': e['tags'],
                        'predicted': [labels[j] for j in p]})
  interesting = [i for i, l in enumerate(labels) if l != 'O']
  m = metrics_lib.classification_metrics(y_true, y_pred, len(labels), label_ids=interesting)
  return m, predictions
