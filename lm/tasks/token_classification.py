"""Token classification (NER/tagging style) on words: each word's first sub-token carries its
tag, the other sub-tokens are not scored (weight 0).

Metrics are per word: accuracy over all words, and macro precision/recall/F1 over every tag
except 'O' (the usual reading: the tags of interest). Words cut off by data.max_len count as
predicted 'O' (or the first label when there is no 'O').

Examples: ``{'tokens': [str], 'tags': [str]}``. Data (lm.tasks.data.load_examples picks the
source):
* python_docs: stdlib functions and classes of the modules reserved for downstream sets
  (lm/data/python_docs.py: not pretraining text) rendered as ``help()`` shows them, one each,
  words tagged ``NAME`` (the object's own name), ``PARAM`` (one of its parameter names, from
  ``inspect.signature``) or ``O``; split by a hash of the object's name.
* files ``.jsonl``: ``{"tokens": [...], "tags": [...]}``; ``.tsv`` / ``.conll``: CoNLL style,
  ``word<TAB>tag`` per line (the last column is the tag), blank lines between sentences.
* tfds: ``conll2003`` (tags from its ``ner`` feature) or any dataset with ``tokens`` and ``tags``.
"""

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np

from lm import metrics as metrics_lib
from lm import tasks
from lm.tasks import data as data_lib
from lm.tasks import python_docs

HEAD = 'tokens'
METRICS = ('f1', 'precision', 'recall', 'accuracy')  # score's; the first is the default
TOKEN_LABELS = ('O', 'NAME', 'PARAM')
_WORD = re.compile(r'\w+|[^\w\s]')


def offline_examples(
  split: str = 'train', eval_fraction: float = 0.2, test_fraction: float = 0.2, max_words: int = 160
) -> list[dict]:
  """help()-style text, words tagged NAME / PARAM / O (see the module docstring)."""
  examples = []
  for _, name, obj, rendered, _ in python_docs.documented_objects():
    try:
      params = set(inspect.signature(obj).parameters) - {'self', 'cls'}
    except (TypeError, ValueError):
      params = set()
    words = _WORD.findall(rendered)[:max_words]
    tags = ['NAME' if w == name else 'PARAM' if w in params else 'O' for w in words]
    examples.append(
      {'id': f'{getattr(obj, "__module__", "")}.{name}', 'tokens': words, 'tags': tags}
    )
  return data_lib.hash_split(examples, lambda e: e['id'], split, eval_fraction, test_fraction)


def read_file(path: str) -> list[dict]:
  if path.endswith('.jsonl'):
    out = []
    for obj in data_lib.read_jsonl(path):
      if len(obj['tokens']) != len(obj['tags']):
        raise ValueError(f'{path}: tokens and tags differ in length: {obj}')
      out.append({'tokens': list(obj['tokens']), 'tags': [str(t) for t in obj['tags']]})
    return out
  out, words, tags = [], [], []
  with open(path, encoding='utf-8') as f:
    for line in f:
      line = line.rstrip('\n')
      if not line.strip() or line.startswith('-DOCSTART-'):
        if words:
          out.append({'tokens': words, 'tags': tags})
        words, tags = [], []
        continue
      cols = line.split('\t') if '\t' in line else line.split()
      words.append(cols[0])
      tags.append(cols[-1])
  if words:
    out.append({'tokens': words, 'tags': tags})
  return out


def tfds_examples(name: str, rows, info):
  """(examples, tag names) from the rows of a CoNLL-layout TFDS dataset."""
  del name
  dec = data_lib.decode
  tag_key = 'ner' if 'ner' in info.features else 'tags'
  names = list(info.features[tag_key].feature.names)
  out = [
    {'tokens': [dec(t) for t in r['tokens']], 'tags': [names[int(t)] for t in r[tag_key]]}
    for r in rows
  ]
  return out, names


def label_names(examples, given=None):
  if given:
    return list(given)
  found = {t for e in examples for t in e['tags']}
  if found <= set(TOKEN_LABELS):
    return list(TOKEN_LABELS)
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
    predictions.append(
      {'tokens': e['tokens'], 'tags': e['tags'], 'predicted': [labels[j] for j in p]}
    )
  interesting = [i for i, l in enumerate(labels) if l != 'O']
  m = metrics_lib.classification_metrics(y_true, y_pred, len(labels), label_ids=interesting)
  # Tagging every word with the split's most frequent tag (F1 over the other tags is then 0).
  m['majority_accuracy'] = float(np.bincount(y_true).max() / max(len(y_true), 1))
  return m, predictions
