"""Fine-tuning tasks, chosen by name: `config.task` is a built-in short name (``BUILTIN``) or
the dotted path of any importable module (``my_project.my_task``), which `get` imports, as
big_vision's evaluators/common.py imports the module its config names.

A task module turns examples into fixed-shape numpy features, defines the loss on its head's
logits, scores predictions, and reads its own data. It provides:
  HEAD                      'pooled' | 'span' | 'tokens' (what lm.tasks.model.TaskModel puts on the body)
  label_names(examples, given)            the label vocabulary (None for span tasks)
  featurize(examples, tok, labels, data_cfg) -> (features {name: np.ndarray [N, ...]}, aux)
  loss_sums(logits, batch)  -> (nll_sum, weight_sum, correct_sum)  (jax, inside jit)
  score(logits, features, aux, examples, labels, data_cfg) -> (metrics dict, predictions list)
and one reader for each data.source it supports (lm.tasks.data.load_examples calls it):
  offline_examples(split, eval_fraction, test_fraction) -> examples   'python_docs': split is
                            'train', 'validation', 'test' or 'all' (lm.tasks.data.hash_split
                            splits stably); built from the downstream side of
                            lm/data/python_docs.py only, never from pretraining text
  read_file(path) -> examples                          'files'
  tfds_examples(name, rows, info) -> (examples, label names or None)       'tfds'
Optional:
  STRATIFY_BY               the example key a low-resource subsample (data.max_train_examples)
                            keeps every value of
  METRICS                   the names of the metrics `score` reports, its primary one first:
                            early_stopping.metric defaults to it and is checked against them
                            (or 'loss') before training starts; without METRICS a wrong name
                            is found at the first evaluation

To add a task, write one such module (copy lm/tasks/classification.py: `Specials`, `pad_rows`
and `truncate_pair` below frame the rows) somewhere on the Python path and set
``config.task = 'my_project.my_task'`` (or ``--config.task=my_project.my_task``); a checkpoint
records that name, so eval.py finds the module again. A built-in one also gets a short name in
``BUILTIN``.
"""

import importlib
from typing import Optional

import numpy as np

BUILTIN = {
  'classification': 'lm.tasks.classification',
  'qa': 'lm.tasks.qa',
  'tokens': 'lm.tasks.token_classification',
}
TASKS = tuple(BUILTIN)
INTERFACE = ('HEAD', 'label_names', 'featurize', 'loss_sums', 'score')


def reported_metrics(task_mod) -> Optional[tuple]:
  """The eval metrics a task reports ('loss' included), or None when it does not say."""
  names = getattr(task_mod, 'METRICS', None)
  return (*names, 'loss') if names else None


def primary_metric(name: str) -> str:
  """The metric early stopping watches by default: the first of the task's METRICS."""
  try:
    names = getattr(get(name), 'METRICS', None)
  except (ValueError, ImportError):  # not importable (yet): finetune.run names the problem
    names = None
  return names[0] if names else 'accuracy'


def get(name: str):
  """The task module `name` names: a built-in short name or an importable module path."""
  path = BUILTIN.get(name, name)
  try:
    module = importlib.import_module(path) if path and not path.startswith('.') else None
  except ModuleNotFoundError as e:
    if e.name is None or not (path + '.').startswith(e.name + '.'):
      raise  # an import missing inside an existing module is that module's error
    module = None
  if module is None:
    raise ValueError(
      f'task={name!r}: not a built-in task ({", ".join(BUILTIN)}) nor an '
      'importable module; a dotted module path (my_project.my_task) works too.'
    )
  missing = [a for a in INTERFACE if not hasattr(module, a)]
  if missing:
    raise ValueError(
      f'task={name!r}: module {module.__name__} lacks {", ".join(missing)} of the '
      'task interface (see lm/tasks/__init__.py).'
    )
  return module


class Specials:
  """How one sequence (or pair) is framed for this tokenizer.

  WordPiece (BERT): [CLS] a [SEP] b [SEP]. Byte-level BPE (GPT-2): a <eos> b <eos>, no
  [CLS] (a decoder reads its summary at the last real token)."""

  def __init__(self, tok):
    self.pad = tok.pad_id if tok.pad_id is not None else 0
    if tok.cls_id is not None and tok.sep_id is not None:
      self.prefix, self.sep = [tok.cls_id], tok.sep_id
    elif tok.eos_id is not None:
      self.prefix, self.sep = [], tok.eos_id
    else:
      raise ValueError(f'{tok} has neither [CLS]/[SEP] nor an end-of-text token.')

  def overhead(self, pair: bool) -> int:
    return len(self.prefix) + (2 if pair else 1)

  def frame(self, a, b=None):
    """(ids, token_type_ids, index in ids of b's first token or None)."""
    ids = self.prefix + list(a) + [self.sep]
    types = [0] * len(ids)
    b_start = None
    if b is not None:
      b_start = len(ids)
      ids += list(b) + [self.sep]
      types += [1] * (len(b) + 1)
    return ids, types, b_start


def pad_rows(rows, length: int, value=0, dtype=np.int32):
  out = np.full((len(rows), length) + np.shape(rows[0])[1:] if rows else (0, length), value, dtype)
  for i, r in enumerate(rows):
    out[i, : len(r)] = r
  return out


def window_starts(n_tokens: int, size: int, stride: int) -> list:
  """Start offsets of windows of `size` tokens, `stride` (at most `size`) apart, covering
  [0, n_tokens): one window when everything fits."""
  starts, s = [], 0
  while True:
    starts.append(s)
    if s + size >= n_tokens:
      return starts
    s += max(1, min(stride, size))


def truncate_pair(a: list, b, budget: int):
  """Longest-first truncation of a (and b) to `budget` tokens in total."""
  a = list(a)
  b = None if b is None else list(b)
  while len(a) + (len(b) if b is not None else 0) > budget:
    if b is not None and len(b) > len(a):
      b.pop()
    else:
      a.pop()
  return a, b
