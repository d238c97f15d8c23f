"""Extractive QA (SQuAD v1.1 style): start/end logits over the context tokens.

Long contexts become several windows (features): ``[CLS] question [SEP] context-window [SEP]``
where each window holds up to ``max_len - len(question) - 3`` context tokens and the next
window starts ``data.doc_stride`` tokens later (BERT's doc stride), so every context token is
in at least one window. A training window whose span does not contain the whole answer points
at position 0 ("no answer here"), as in BERT.

Post-processing: for every example, over all of its windows, the `n_best` highest start and end
logits at context tokens form candidate spans with start <= end and at most
``data.max_answer_len`` tokens; the span with the highest start+end logit wins and is mapped
back to the *original* context through the tokenizer's character offsets, so the prediction is
an exact substring of the context (surrounding whitespace stripped).
Metrics: SQuAD v1.1 exact match and F1 (lm.metrics.squad_metrics).

Examples: ``{'id': str, 'question': str, 'context': str, 'answers': [{'text': str, 'start': int}]}``
(``start`` is the answer's character offset in ``context``). Data (lm.tasks.data.load_examples
picks the source):
* python_docs: for each stdlib module reserved for downstream sets (lm/data/python_docs.py: not
  pretraining text), its public functions and classes are rendered as ``help()`` shows them
  (``name(signature)`` then the docstring), grouped by module in windows of ``QA_GROUP`` objects into one long context; the question
  ``What does <name> do?`` is answered by the summary sentence of that object's docstring
  (PEP 257: the first sentence), located by its character offset in the context. Split by a
  hash of module and group number, so all questions on one context land in one split.
* files ``.jsonl``: SQuAD-style objects ``{"id", "question", "context", "answers": {"text":
  [...], "answer_start": [...]}}`` (HF ``datasets`` layout) or ``"answers": [{"text",
  "answer_start"}]``. ``.json``: an official SQuAD v1.1 file (``data/paragraphs/qas``).
* tfds: ``squad``.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np

from lm import metrics as metrics_lib
from lm import tasks
from lm.tasks import data as data_lib
from lm.tasks import python_docs

HEAD = 'span'
METRICS = ('f1', 'exact_match')  # what score reports (percent); the first is the default
QA_GROUP = 8


def offline_examples(
  split: str = 'train', eval_fraction: float = 0.2, test_fraction: float = 0.2
) -> list[dict]:
  """'What does <name> do?' over a long module context (see the module docstring)."""
  by_module = {}
  for mod_name, name, _, rendered, doc in python_docs.documented_objects():
    by_module.setdefault(mod_name, []).append((name, rendered, doc))
  examples = []
  for mod_name, objs in by_module.items():
    for g in range(0, len(objs), QA_GROUP):
      group = objs[g : g + QA_GROUP]
      context, starts = '', []
      for name, rendered, _ in group:
        starts.append(len(context) + len(name) + rendered[len(name) :].index('\n    ') + 5)
        context += rendered + '\n\n'
      context = context.rstrip('\n')
      for (name, rendered, doc), doc_start in zip(group, starts):
        summary = python_docs.summary(doc)
        if summary is None or sum(n == name for n, _, _ in group) > 1:
          continue
        start = context.find(summary, doc_start)
        if start < 0 or start > doc_start + len(doc):  # reflowed lines: not verbatim, skip
          continue
        examples.append(
          {
            'id': f'{mod_name}.{name}',
            'question': f'What does {name} do?',
            'context': context,
            'answers': [{'text': summary, 'start': start}],
            'group': f'{mod_name}/{g // QA_GROUP}',
          }
        )
  return data_lib.hash_split(examples, lambda e: e['group'], split, eval_fraction, test_fraction)


def read_file(path: str) -> list[dict]:
  out = []
  if path.endswith('.json'):  # official SQuAD v1.1
    with open(path, encoding='utf-8') as f:
      data = json.load(f)['data']
    for article in data:
      for para in article['paragraphs']:
        for qa in para['qas']:
          out.append(
            {
              'id': qa['id'],
              'question': qa['question'],
              'context': para['context'],
              'answers': [
                {'text': a['text'], 'start': int(a['answer_start'])} for a in qa['answers']
              ],
            }
          )
    return out
  for i, obj in enumerate(data_lib.read_jsonl(path)):
    ans = obj.get('answers', [])
    if isinstance(ans, dict):
      ans = [{'text': t, 'start': int(s)} for t, s in zip(ans['text'], ans['answer_start'])]
    else:
      ans = [{'text': a['text'], 'start': int(a.get('answer_start', a.get('start')))} for a in ans]
    out.append(
      {
        'id': str(obj.get('id', i)),
        'question': obj['question'],
        'context': obj['context'],
        'answers': ans,
      }
    )
  return out


def tfds_examples(name: str, rows, info):
  """(examples, None) from the rows of a SQuAD-layout TFDS dataset."""
  del name, info
  dec = data_lib.decode
  out = []
  for i, r in enumerate(rows):
    ans = r['answers']
    out.append(
      {
        'id': dec(r.get('id', i)),
        'question': dec(r['question']),
        'context': dec(r['context']),
        'answers': [
          {'text': dec(t), 'start': int(s)} for t, s in zip(ans['text'], ans['answer_start'])
        ],
      }
    )
  return out, None


def label_names(examples, given=None):
  del examples, given
  return None


def windows(n_tokens: int, size: int, stride: int):
  """Start offsets of windows of `size` tokens, `stride` apart, covering [0, n_tokens)."""
  if size <= 0:
    raise ValueError(
      'data.max_query_len leaves no room for the context: lower it or raise data.max_len.'
    )
  return tasks.window_starts(n_tokens, size, stride)


def featurize(examples, tok, labels, data_cfg):
  del labels
  sp = tasks.Specials(tok)
  max_len, stride = int(data_cfg.max_len), int(data_cfg.doc_stride)
  q_encs = tok.hf.encode_batch([e['question'] for e in examples], add_special_tokens=False)
  c_encs = tok.hf.encode_batch([e['context'] for e in examples], add_special_tokens=False)
  rows = {k: [] for k in ('input_ids', 'token_type_ids', 'offsets', 'start', 'end', 'example')}
  for ex_i, (e, qe, ce) in enumerate(zip(examples, q_encs, c_encs)):
    q = qe.ids[: int(data_cfg.max_query_len)]
    size = max_len - len(q) - sp.overhead(True)
    offsets = np.asarray(ce.offsets, np.int32).reshape(-1, 2)
    # The answer's token span (first answer; training only needs one).
    tok_s = tok_e = -1
    if e['answers']:
      a = e['answers'][0]
      c0, c1 = a['start'], a['start'] + len(a['text'])
      inside = np.nonzero((offsets[:, 1] > c0) & (offsets[:, 0] < c1))[0]
      if len(inside):
        tok_s, tok_e = int(inside[0]), int(inside[-1])
    for w in windows(len(ce.ids), size, stride):
      ctx = ce.ids[w : w + size]
      ids, types, b0 = sp.frame(q, ctx)
      off = np.full((max_len, 2), -1, np.int32)
      off[b0 : b0 + len(ctx)] = offsets[w : w + len(ctx)]
      if tok_s >= w and tok_e < w + len(ctx):
        s, t = b0 + tok_s - w, b0 + tok_e - w
      else:
        s = t = 0
      rows['input_ids'].append(ids)
      rows['token_type_ids'].append(types)
      rows['offsets'].append(off)
      rows['start'].append(s)
      rows['end'].append(t)
      rows['example'].append(ex_i)
  features = {
    'input_ids': tasks.pad_rows(rows['input_ids'], max_len, sp.pad),
    'token_type_ids': tasks.pad_rows(rows['token_type_ids'], max_len, 0),
    'attention_mask': tasks.pad_rows([[1] * len(i) for i in rows['input_ids']], max_len, 0),
    'start': np.asarray(rows['start'], np.int32),
    'end': np.asarray(rows['end'], np.int32),
    'weight': np.ones(len(rows['start']), np.float32),
  }
  aux = {
    'offsets': np.stack(rows['offsets'])
    if rows['offsets']
    else np.zeros((0, max_len, 2), np.int32),
    'example': np.asarray(rows['example'], np.int32),
  }
  return features, aux


def loss_sums(logits, batch):
  """Mean of start and end cross-entropy; 'correct' = both ends right."""
  neg = jnp.finfo(jnp.float32).min
  mask = batch['attention_mask'].astype(bool)
  logits = jnp.where(mask[..., None], logits.astype(jnp.float32), neg)
  nll, hits = 0.0, 1.0
  for k, name in enumerate(('start', 'end')):
    logp = jax.nn.log_softmax(logits[..., k], axis=-1)
    nll = nll + -jnp.take_along_axis(logp, batch[name][:, None], axis=-1)[:, 0] / 2
    hits = hits * (jnp.argmax(logits[..., k], -1) == batch[name]).astype(jnp.float32)
  w = batch['weight']
  return jnp.sum(nll * w), jnp.sum(w), jnp.sum(hits * w)


def best_spans(
  start_logits,
  end_logits,
  offsets,
  example_index,
  num_examples: int,
  max_answer_len: int,
  n_best: int = 20,
):
  """Per example: (score, char_start, char_end) of the best span over all its windows, or None."""
  best = [None] * num_examples
  for f in range(len(example_index)):
    valid = offsets[f, :, 0] >= 0
    if not valid.any():
      continue
    s_log = np.where(valid, start_logits[f], -np.inf)
    e_log = np.where(valid, end_logits[f], -np.inf)
    k = min(n_best, int(valid.sum()))
    starts = np.argsort(-s_log)[:k]
    ends = np.argsort(-e_log)[:k]
    for s in starts:
      for e in ends:
        if e < s or e - s + 1 > max_answer_len:
          continue
        sc = float(s_log[s] + e_log[e])
        i = int(example_index[f])
        if best[i] is None or sc > best[i][0]:
          best[i] = (sc, int(offsets[f, s, 0]), int(offsets[f, e, 1]))
  return best


def score(logits, features, aux, examples, labels, data_cfg):
  del features, labels
  logits = np.asarray(logits, np.float32)
  best = best_spans(
    logits[..., 0],
    logits[..., 1],
    aux['offsets'],
    aux['example'],
    len(examples),
    int(data_cfg.max_answer_len),
    int(data_cfg.n_best),
  )
  preds, predictions = {}, []
  for i, e in enumerate(examples):
    text = '' if best[i] is None else e['context'][best[i][1] : best[i][2]].strip()
    preds[e['id']] = text
    predictions.append(
      {
        'id': e['id'],
        'question': e['question'],
        'prediction': text,
        'answers': [a['text'] for a in e['answers']],
      }
    )
  answers = {e['id']: [a['text'] for a in e['answers']] or [''] for e in examples}
  m = metrics_lib.squad_metrics(preds, answers)
  # The trivial baseline beside it: the context's first sentence as every answer.
  lead = metrics_lib.squad_metrics(
    {e['id']: metrics_lib.lead_sentence(e['context']) for e in examples}, answers
  )
  m.update({f'lead_{k}': v for k, v in lead.items() if k != 'count'})
  return m, predictions
