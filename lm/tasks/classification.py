"""Sequence classification, single sentences or pairs (GLUE-style), on the pooled output.

Examples: ``{'text': str, 'text_b': str | None, 'label': str}``. Rows are framed by
`lm.tasks.Specials` and truncated longest-first to data.max_len; or, with
``data.window_stride`` > 0, a single text longer than that becomes several windows of
max_len tokens (framing included), ``window_stride`` tokens apart (as QA's doc stride), and
the example's prediction is the mean of its windows' logits: since the head is linear, that is
the head applied to the mean pooled state, and a text that fits keeps its one row, so its
logits are exactly those without windows. Each window of an n-window text weighs 1/n in the
loss (training and the eval loss), so every example weighs as much as before. Pairs are
truncated as always.
Metrics: accuracy and macro precision/recall/F1 over all labels (lm.metrics).

Data (lm.tasks.data.load_examples picks the source):
* python_docs: paragraphs of the ``pydoc_data.topics`` pages (the text of ``help('assert')``
  etc.), labelled with the part of the Python documentation each page is generated from
  (``TOPIC_GROUPS``: the Language Reference's statements / expressions / data model / lexical
  analysis chapters, or the Library Reference's built-in types page). Paragraphs shorter than 80
  characters and pure code blocks are dropped; split by a hash of the text. Every topic page is
  on the downstream side of lm/data/python_docs.py: none of it is pretraining text.
* files ``.tsv``: ``label<TAB>text`` or ``label<TAB>text_a<TAB>text_b`` per line; an optional
  first line ``label<TAB>text...`` is a header and skipped. ``.jsonl``: one object per line with
  ``text`` (or ``sentence``), optional ``text_b``, and ``label`` (string or int).
* tfds: GLUE tasks by name (text fields from ``GLUE_FIELDS``), or any dataset with ``text`` and
  a ``label`` feature.
"""

import csv
import inspect

import jax
import jax.numpy as jnp
import numpy as np

from lm import metrics as metrics_lib
from lm import tasks
from lm.tasks import data as data_lib
from lm.tasks import python_docs

HEAD = 'pooled'
METRICS = ('accuracy', 'f1', 'precision', 'recall')  # what score reports; the first is the default
STRATIFY_BY = 'label'  # a low-resource subsample keeps every label (finetune.subsample_train)

# pydoc topic -> documentation part it comes from (Doc/reference/*.rst, Doc/library/stdtypes.rst).
TOPIC_GROUPS = {
  'statements': (
    'assert',
    'assignment',
    'augassign',
    'break',
    'continue',
    'del',
    'global',
    'import',
    'nonlocal',
    'pass',
    'raise',
    'return',
    'yield',  # simple_stmts
    'async',
    'class',
    'compound',
    'for',
    'function',
    'if',
    'try',
    'while',
    'with',
  ),  # compound_stmts
  'expressions': (
    'atom-identifiers',
    'atom-literals',
    'attribute-references',
    'await',
    'binary',
    'bitwise',
    'booleans',
    'calls',
    'comparisons',
    'conversions',
    'dict',
    'exprlists',
    'lambda',
    'lists',
    'operator-summary',
    'power',
    'shifting',
    'slicings',
    'subscriptions',
    'unary',
  ),
  'data model': (
    'attribute-access',
    'callable-types',
    'context-managers',
    'customization',
    'numeric-types',
    'objects',
    'sequence-types',
    'specialnames',
    'types',
  ),
  'built-in types': (
    'bltin-code-objects',
    'bltin-ellipsis-object',
    'bltin-null-object',
    'bltin-type-objects',
    'specialattrs',
    'string-methods',
    'truth',
    'typesfunctions',
    'typesmapping',
    'typesmethods',
    'typesmodules',
    'typesseq',
    'typesseq-mutable',
  ),
  'lexical analysis': (
    'id-classes',
    'identifiers',
    'floating',
    'imaginary',
    'integers',
    'numbers',
    'strings',
  ),
}
TOPIC_LABELS = tuple(TOPIC_GROUPS)

GLUE_FIELDS = {  # tfds name -> (text field, second text field or None)
  'glue/cola': ('sentence', None),
  'glue/sst2': ('sentence', None),
  'glue/mrpc': ('sentence1', 'sentence2'),
  'glue/qqp': ('question1', 'question2'),
  'glue/stsb': ('sentence1', 'sentence2'),
  'glue/mnli': ('premise', 'hypothesis'),
  'glue/qnli': ('question', 'sentence'),
  'glue/rte': ('sentence1', 'sentence2'),
  'glue/wnli': ('sentence1', 'sentence2'),
  'glue/ax': ('premise', 'hypothesis'),
}


def offline_examples(
  split: str = 'train', eval_fraction: float = 0.2, test_fraction: float = 0.2
) -> list[dict]:
  """Paragraph -> documentation part (see the module docstring)."""
  from pydoc_data.topics import topics  # pylint: disable=g-import-not-at-top

  examples = []
  for label, keys in TOPIC_GROUPS.items():
    for key in keys:
      if key not in topics:  # topics differ a little between Python versions
        continue
      for p in python_docs.paragraphs(inspect.cleandoc(topics[key])):
        examples.append({'text': p, 'text_b': None, 'label': label})
  # Dedupe (a few paragraphs repeat across pages) keeping the first label; stable order.
  seen, unique = set(), []
  for e in sorted(examples, key=lambda e: (e['label'], e['text'])):
    if e['text'] not in seen:
      seen.add(e['text'])
      unique.append(e)
  return data_lib.hash_split(unique, lambda e: e['text'], split, eval_fraction, test_fraction)


def read_file(path: str) -> list[dict]:
  out = []
  if path.endswith('.jsonl'):
    for obj in data_lib.read_jsonl(path):
      text = obj.get('text', obj.get('sentence'))
      if text is None or 'label' not in obj:
        raise ValueError(f'{path}: each line needs "text" (or "sentence") and "label": {obj}')
      out.append({'text': text, 'text_b': obj.get('text_b'), 'label': str(obj['label'])})
    return out
  with open(path, encoding='utf-8', newline='') as f:
    rows = list(csv.reader(f, delimiter='\t', quoting=csv.QUOTE_NONE))
  if rows and rows[0] and rows[0][0].strip().lower() == 'label':
    rows = rows[1:]
  for i, row in enumerate(rows):
    if not row or not any(row):
      continue
    if len(row) not in (2, 3):
      raise ValueError(
        f'{path}:{i + 1}: expected label<TAB>text[<TAB>text_b], got {len(row)} columns.'
      )
    out.append({'text': row[1], 'text_b': row[2] if len(row) == 3 else None, 'label': row[0]})
  return out


def tfds_examples(name: str, rows, info):
  """(examples, label names or None) from the rows of a TFDS dataset."""
  if name not in GLUE_FIELDS and 'label' not in info.features:
    raise ValueError(f'{name}: unknown text fields; use a GLUE task ({sorted(GLUE_FIELDS)}).')
  a, b = GLUE_FIELDS.get(name, ('text', None))
  names = list(info.features['label'].names) if hasattr(info.features['label'], 'names') else None
  dec = data_lib.decode
  out = []
  for r in rows:
    if int(r['label']) < 0:  # GLUE test splits have no labels
      continue
    label = names[int(r['label'])] if names else str(r['label'])
    out.append({'text': dec(r[a]), 'text_b': dec(r[b]) if b else None, 'label': label})
  return out, names


def label_names(examples, given=None):
  if given:
    return list(given)
  found = {e['label'] for e in examples}
  if found <= set(TOPIC_LABELS):
    return list(TOPIC_LABELS)
  return sorted(found)


def featurize(examples, tok, labels, data_cfg):
  sp = tasks.Specials(tok)
  index = {l: i for i, l in enumerate(labels)}
  max_len = int(data_cfg.max_len)
  stride = int(data_cfg.get('window_stride', 0))
  a_ids = tok.encode_batch([e['text'] for e in examples])
  b_texts = [e.get('text_b') for e in examples]
  b_ids = (
    tok.encode_batch([t for t in b_texts if t is not None])
    if any(t is not None for t in b_texts)
    else []
  )
  b_iter = iter(b_ids)
  ids, types, label, weight, example = [], [], [], [], []
  for ex_i, (e, a, bt) in enumerate(zip(examples, a_ids, b_texts)):
    b = next(b_iter) if bt is not None else None
    budget = max_len - sp.overhead(b is not None)
    if b is None and stride > 0:
      pieces = [(a[w : w + budget], None) for w in tasks.window_starts(len(a), budget, stride)]
    else:
      pieces = [tasks.truncate_pair(a, b, budget)]
    if e['label'] not in index:
      raise ValueError(
        f'label {e["label"]!r} is not among the labels {labels}: set '
        'data.labels or check the data files.'
      )
    for piece_a, piece_b in pieces:
      i, t, _ = sp.frame(piece_a, piece_b)
      ids.append(i)
      types.append(t)
      label.append(index[e['label']])
      weight.append(1.0 / len(pieces))
      example.append(ex_i)
  features = {
    'input_ids': tasks.pad_rows(ids, max_len, sp.pad),
    'token_type_ids': tasks.pad_rows(types, max_len, 0),
    'attention_mask': tasks.pad_rows([[1] * len(i) for i in ids], max_len, 0),
    'label': np.asarray(label, np.int32),
    'weight': np.asarray(weight, np.float32),
  }
  return features, {'example': np.asarray(example, np.int64)}


def example_logits(logits, example, num_examples: int):
  """[num_examples, C]: the mean of each example's window logits (`featurize`'s aux['example']
  maps rows to examples); an example with one row keeps its logits exactly."""
  logits = np.asarray(logits, np.float32)
  sums = np.zeros((num_examples, logits.shape[-1]), np.float64)
  np.add.at(sums, example, logits)
  counts = np.bincount(example, minlength=num_examples)[:, None]
  return (sums / np.maximum(counts, 1)).astype(np.float32)


def loss_sums(logits, batch):
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  nll = -jnp.take_along_axis(logp, batch['label'][:, None], axis=-1)[:, 0]
  correct = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)
  w = batch['weight']
  return jnp.sum(nll * w), jnp.sum(w), jnp.sum(correct * w)


def score(logits, features, aux, examples, labels, data_cfg):
  del data_cfg
  pred = np.argmax(example_logits(logits, aux['example'], len(examples)), -1)
  gold = np.zeros(len(examples), np.int64)
  gold[aux['example']] = features['label']
  m = metrics_lib.classification_metrics(gold, pred, len(labels), label_ids=range(len(labels)))
  # What always answering the split's most frequent label would score: the bar to clear.
  m['majority_accuracy'] = float(np.bincount(gold).max() / max(len(pred), 1))
  predictions = [
    {'text': e['text'], 'label': e['label'], 'prediction': labels[int(p)]}
    for e, p in zip(examples, pred)
  ]
  return m, predictions
