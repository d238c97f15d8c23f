"""Labelled examples for fine-tuning: local files, TFDS by name, and offline defaults.

Examples are plain dicts, one shape per task:

* classification: ``{'text': str, 'text_b': str | None, 'label': str}``
* qa: ``{'id': str, 'question': str, 'context': str, 'answers': [{'text': str, 'start': int}]}``
  (``start`` is the answer's character offset in ``context``)
* tokens: ``{'tokens': [str], 'tags': [str]}``

Local file formats (UTF-8; chosen by extension):

* classification ``.tsv``: ``label<TAB>text`` or ``label<TAB>text_a<TAB>text_b`` per line; an
  optional first line ``label<TAB>text...`` is a header and skipped. ``.jsonl``: one object per
  line with ``text`` (or ``sentence``), optional ``text_b``, and ``label`` (string or int).
* qa ``.jsonl``: SQuAD-style objects ``{"id", "question", "context", "answers": {"text": [...],
  "answer_start": [...]}}`` (HF ``datasets`` layout) or ``"answers": [{"text", "answer_start"}]``.
  ``.json``: an official SQuAD v1.1 file (``data/paragraphs/qas``).
* tokens ``.jsonl``: ``{"tokens": [...], "tags": [...]}``; ``.tsv`` / ``.conll``: CoNLL style,
  ``word<TAB>tag`` per line (the last column is the tag), blank lines between sentences.

TFDS (``data.source='tfds'``, ``data.tfds_name``, ``data.data_dir``): GLUE tasks by name (the
text fields come from ``GLUE_FIELDS``), ``squad`` for QA, ``conll2003`` for tokens; the data
must already be prepared in ``data_dir`` (no download is attempted).

Offline defaults (``data.source='python_docs'``), built at run time from text every Python
install ships, deterministic, with labels read off real structure:

* classification: paragraphs of the ``pydoc_data.topics`` pages (the text of ``help('assert')``
  etc.), labelled with the part of the Python documentation each page is generated from
  (``TOPIC_GROUPS``: the Language Reference's statements / expressions / data model / lexical
  analysis chapters, or the Library Reference's built-in types page). Paragraphs shorter than 80
  characters and pure code blocks (every line indented) are dropped.
* qa: for each stdlib module of ``lm.data.corpus.STDLIB_MODULES``, its public functions and
  classes are rendered as ``help()`` shows them (``name(signature)`` then the docstring), grouped
  by module in windows of ``QA_GROUP`` objects into one long context; the question
  ``What does <name> do?`` is answered by the summary sentence of that object's docstring
  (PEP 257: the first sentence), located by its character offset in the context.
* tokens: the same ``help()`` renderings, one object each, words tagged ``NAME`` (the object's
  own name), ``PARAM`` (one of its parameter names, from ``inspect.signature``) or ``O``.

Splits are by a sha256 hash of each example's text (classification), of the context (qa; all
questions on one context land in one split: the key is module and group number) or of the
object name (tokens), so they are stable
across runs and machines.
"""
from __future__ import annotations

import csv
import hashlib
import importlib
import inspect
import json
import os
import re
import warnings
from typing import Optional

# pydoc topic -> documentation part it comes from (Doc/reference/*.rst, Doc/library/stdtypes.rst).
TOPIC_GROUPS = {
    'statements': ('assert', 'assignment', 'augassign', 'break', 'continue', 'del', 'global',
                   'import', 'nonlocal', 'pass', 'raise', 'return', 'yield',  # simple_stmts
                   'async', 'class', 'compound', 'for', 'function', 'if', 'try', 'while',
                   'with'),  # compound_stmts
    'expressions': ('atom-identifiers', 'atom-literals', 'attribute-references', 'await', 'binary',
                    'bitwise', 'booleans', 'calls', 'comparisons', 'conversions', 'dict',
                    'exprlists', 'lambda', 'lists', 'operator-summary', 'power', 'shifting',
                    'slicings', 'subscriptions', 'unary'),
    'data model': ('attribute-access', 'callable-types', 'context-managers', 'customization',
                   'numeric-types', 'objects', 'sequence-types', 'specialnames', 'types'),
    'built-in types': ('bltin-code-objects', 'bltin-ellipsis-object', 'bltin-null-object',
                       'bltin-type-objects', 'specialattrs', 'string-methods', 'truth',
                       'typesfunctions', 'typesmapping', 'typesmethods', 'typesmodules', 'typesseq',
                       'typesseq-mutable'),
    'lexical analysis': ('id-classes', 'identifiers', 'floating', 'imaginary', 'integers',
                         'numbers', 'strings'),
}
TOPIC_LABELS = tuple(TOPIC_GROUPS)
QA_GROUP = 8
TOKEN_LABELS = ('O', 'NAME', 'PARAM')

GLUE_FIELDS = {  # tfds name -> (text field, second text field or None)
    'glue/cola': ('sentence', None), 'glue/sst2': ('sentence', None),
    'glue/mrpc': ('sentence1', 'sentence2'), 'glue/qqp': ('question1', 'question2'),
    'glue/stsb': ('sentence1', 'sentence2'), 'glue/mnli': ('premise', 'hypothesis'),
    'glue/qnli': ('question', 'sentence'), 'glue/rte': ('sentence1', 'sentence2'),
    'glue/wnli': ('sentence1', 'sentence2'), 'glue/ax': ('premise', 'hypothesis'),
}


def in_eval_split(key: str, fraction: float) -> bool:
  digest = hashlib.sha256(key.encode('utf-8', errors='replace')).digest()
  return int.from_bytes(digest[:8], 'big') / 2.0 ** 64 < fraction


def _split(examples, key_fn, split: str, fraction: float):
  if split not in ('train', 'validation', 'all'):
    raise ValueError(f'split={split!r}: the offline sets have train, validation and all.')
  if split == 'all':
    return list(examples)
  want = split == 'validation'
  return [e for e in examples if in_eval_split(key_fn(e), fraction) == want]


# ------------------------------------------------------------------------------------------------
# Offline defaults.


def _paragraphs(text: str) -> list[str]:
  out = []
  for p in re.split(r'\n\s*\n', text):
    lines = p.split('\n')
    if len(p) < 80 or all(l.startswith(' ') for l in lines):  # short, or a code block
      continue
    if len(lines) >= 2 and set(lines[-1].strip()) <= set('*=-'):  # a heading
      continue
    out.append(' '.join(l.strip() for l in lines))
  return out


def pydoc_topic_classification(split: str = 'train', eval_fraction: float = 0.2) -> list[dict]:
  """Paragraph -> documentation part (see the module docstring)."""
  from pydoc_data.topics import topics  # pylint: disable=g-import-not-at-top
  examples = []
  for label, keys in TOPIC_GROUPS.items():
    for key in keys:
      if key not in topics:  # topics differ a little between Python versions
        continue
      for p in _paragraphs(inspect.cleandoc(topics[key])):
        examples.append({'text': p, 'text_b': None, 'label': label})
  # Dedupe (a few paragraphs repeat across pages) keeping the first label; stable order.
  seen, unique = set(), []
  for e in sorted(examples, key=lambda e: (e['label'], e['text'])):
    if e['text'] not in seen:
      seen.add(e['text'])
      unique.append(e)
  return _split(unique, lambda e: e['text'], split, eval_fraction)


def _documented_objects():
  """(module, name, object, help-style rendering, docstring) of stdlib public callables."""
  from lm.data import corpus  # pylint: disable=g-import-not-at-top
  out = []
  for mod_name in corpus.STDLIB_MODULES:
    try:
      module = importlib.import_module(mod_name)
    except ImportError:
      continue
    for name, obj in sorted(vars(module).items()):
      if name.startswith('_') or not (inspect.isclass(obj) or inspect.isfunction(obj)):
        continue
      if getattr(obj, '__module__', None) != module.__name__:
        continue
      with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        doc = obj.__doc__
      if not isinstance(doc, str) or len(doc.strip()) < 40:
        continue
      doc = inspect.cleandoc(doc)
      sig = _signature(obj)
      out.append((mod_name, name, obj, f'{name}{sig}\n    {doc}', doc))
  return out


def _signature(obj) -> str:
  """'(a, b=1, *args, key=...)': defaults shown only when they are plain literals, since other
  reprs carry memory addresses or process state (not reproducible)."""
  try:
    params = inspect.signature(obj).parameters.values()
  except (TypeError, ValueError):
    return '(...)'
  parts, star_done = [], False
  for p in params:
    if p.kind == p.VAR_POSITIONAL:
      parts.append(f'*{p.name}')
      star_done = True
      continue
    if p.kind == p.VAR_KEYWORD:
      parts.append(f'**{p.name}')
      continue
    if p.kind == p.KEYWORD_ONLY and not star_done:
      parts.append('*')
      star_done = True
    d = p.default
    if d is p.empty:
      parts.append(p.name)
    elif d is None or isinstance(d, (bool, int, float)) or (isinstance(d, str) and len(d) < 20):
      parts.append(f'{p.name}={d!r}')
    else:
      parts.append(f'{p.name}=...')
  sig = '(' + ', '.join(parts) + ')'
  return sig if len(sig) <= 200 else sig[:200] + '...)'


def _summary(doc: str) -> Optional[str]:
  """PEP 257 summary: the docstring's first sentence (up to '. ' or the first blank line)."""
  para = doc.split('\n\n')[0]
  m = re.match(r'(.+?[.!?])(\s|$)', para, re.S)
  s = (m.group(1) if m else para).strip()
  if len(s) < 12 or len(s) > 400:
    return None
  return s


def docstring_qa(split: str = 'train', eval_fraction: float = 0.2) -> list[dict]:
  """'What does <name> do?' over a long module context (see the module docstring)."""
  by_module = {}
  for mod_name, name, _, rendered, doc in _documented_objects():
    by_module.setdefault(mod_name, []).append((name, rendered, doc))
  examples = []
  for mod_name, objs in by_module.items():
    for g in range(0, len(objs), QA_GROUP):
      group = objs[g:g + QA_GROUP]
      context, starts = '', []
      for name, rendered, _ in group:
        starts.append(len(context) + len(name) + rendered[len(name):].index('\n    ') + 5)
        context += rendered + '\n\n'
      context = context.rstrip('\n')
      for (name, rendered, doc), doc_start in zip(group, starts):
        summary = _summary(doc)
        if summary is None or sum(n == name for n, _, _ in group) > 1:
          continue
        start = context.find(summary, doc_start)
        if start < 0 or start > doc_start + len(doc):  # reflowed lines: not verbatim, skip
          continue
        examples.append({'id': f'{mod_name}.{name}', 'question': f'What does {name} do?',
                         'context': context, 'answers': [{'text': summary, 'start': start}],
                         'group': f'{mod_name}/{g // QA_GROUP}'})
  return _split(examples, lambda e: e['group'], split, eval_fraction)


_WORD = re.compile(r'\w+|[^\w\s]')


def docstring_tokens(split: str = 'train', eval_fraction: float = 0.2,
                     max_words: int = 160) -> list[dict]:
  """help()-style text, words tagged NAME / PARAM / O (see the module docstring)."""
  examples = []
  for _, name, obj, rendered, _ in _documented_objects():
    try:
      params = set(inspect.signature(obj).parameters) - {'self', 'cls'}
    except (TypeError, ValueError):
      params = set()
    words = _WORD.findall(rendered)[:max_words]
    tags = ['NAME' if w == name else 'PARAM' if w in params else 'O' for w in words]
    examples.append({'id': f'{getattr(obj, "__module__", "")}.{name}', 'tokens': words,
                     'tags': tags})
  return _split(examples, lambda e: e['id'], split, eval_fraction)


OFFLINE = {'classification': pydoc_topic_classification, 'qa': docstring_qa,
           'tokens': docstring_tokens}


# ------------------------------------------------------------------------------------------------
# Local files.


def read_classification_file(path: str) -> list[dict]:
  out = []
  if path.endswith('.jsonl'):
    for obj in _jsonl(path):
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
      raise ValueError(f'{path}:{i + 1}: expected label<TAB>text[<TAB>text_b], got {len(row)} '
                       'columns.')
    out.append({'text': row[1], 'text_b': row[2] if len(row) == 3 else None, 'label': row[0]})
  return out


def read_qa_file(path: str) -> list[dict]:
  out = []
  if path.endswith('.json'):  # official SQuAD v1.1
    with open(path, encoding='utf-8') as f:
      data = json.load(f)['data']
    for article in data:
      for para in article['paragraphs']:
        for qa in para['qas']:
          out.append({'id': qa['id'], 'question': qa['question'], 'context': para['context'],
                      'answers': [{'text': a['text'], 'start': int(a['answer_start'])}
                                  for a in qa['answers']]})
    return out
  for i, obj in enumerate(_jsonl(path)):
    ans = obj.get('answers', [])
    if isinstance(ans, dict):
      ans = [{'text': t, 'start': int(s)} for t, s in zip(ans['text'], ans['answer_start'])]
    else:
      ans = [{'text': a['text'], 'start': int(a.get('answer_start', a.get('start')))} for a in ans]
    out.append({'id': str(obj.get('id', i)), 'question': obj['question'],
                'context': obj['context'], 'answers': ans})
  return out


def read_token_file(path: str) -> list[dict]:
  if path.endswith('.jsonl'):
    out = []
    for obj in _jsonl(path):
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


def _jsonl(path: str):
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f):
      if line.strip():
        try:
          yield json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f'{path}:{n + 1}: not JSON ({e}).') from e


READERS = {'classification': read_classification_file, 'qa': read_qa_file,
           'tokens': read_token_file}


# ------------------------------------------------------------------------------------------------
# TFDS.


def read_tfds(task: str, name: str, split: str, data_dir: Optional[str], max_examples: int = 0):
  """(examples, label names or None) from a prepared TFDS dataset."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if not data_dir:
    raise ValueError('data.source=tfds needs data.data_dir (a prepared TFDS directory): tfds '
                     'would otherwise try the network.')
  ds, info = tfds.load(name, split=split, data_dir=data_dir, with_info=True, download=False)
  if max_examples:
    ds = ds.take(max_examples)
  rows = tfds.as_numpy(ds)
  dec = lambda x: x.decode('utf-8') if isinstance(x, bytes) else str(x)
  if task == 'classification':
    if name not in GLUE_FIELDS and 'label' not in info.features:
      raise ValueError(f'{name}: unknown text fields; use a GLUE task ({sorted(GLUE_FIELDS)}).')
    a, b = GLUE_FIELDS.get(name, ('text', None))
    names = list(info.features['label'].names) if hasattr(info.features['label'], 'names') else None
    out = []
    for r in rows:
      if int(r['label']) < 0:  # GLUE test splits have no labels
        continue
      label = names[int(r['label'])] if names else str(r['label'])
      out.append({'text': dec(r[a]), 'text_b': dec(r[b]) if b else None, 'label': label})
    return out, names
  if task == 'qa':
    out = []
    for i, r in enumerate(rows):
      ans = r['answers']
      out.append({'id': dec(r.get('id', i)), 'question': dec(r['question']),
                  'context': dec(r['context']),
                  'answers': [{'text': dec(t), 'start': int(s)}
                              for t, s in zip(ans['text'], ans['answer_start'])]})
    return out, None
  if task == 'tokens':
    tag_key = 'ner' if 'ner' in info.features else 'tags'
    names = list(info.features[tag_key].feature.names)
    out = [{'tokens': [dec(t) for t in r['tokens']], 'tags': [names[int(t)] for t in r[tag_key]]}
           for r in rows]
    return out, names
  raise ValueError(f'unknown task {task!r}')


def load_examples(task: str, data_cfg, split: str):
  """(examples, label names or None) for `split` ('train' or the eval split)."""
  source = data_cfg.source
  if source == 'python_docs':
    return OFFLINE[task](split, data_cfg.eval_fraction), None
  if source == 'files':
    path = data_cfg.train_file if split == 'train' else data_cfg.eval_file
    if not path or not os.path.isfile(path):
      raise FileNotFoundError(f'data.{"train" if split == "train" else "eval"}_file={path!r} does '
                              'not exist: pass a local file (format in lm/tasks/data.py).')
    return READERS[task](path), None
  if source == 'tfds':
    tfds_split = data_cfg.train_split if split == 'train' else data_cfg.eval_split
    return read_tfds(task, data_cfg.tfds_name, tfds_split, data_cfg.data_dir,
                     int(data_cfg.max_examples))
  raise ValueError(f"data.source={source!r}: use 'python_docs', 'files' or 'tfds'.")
