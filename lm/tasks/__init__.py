"""Fine-tuning tasks: each module turns examples into fixed-shape numpy features, defines the
loss on its head's logits, and scores predictions (see lm/tasks/data.py for the data).

A task module provides:
  HEAD                      'pooled' | 'span' | 'tokens' (what lm.finetune.TaskModel puts on the body)
  label_names(examples, given)            the label vocabulary (None for span tasks)
  featurize(examples, tok, labels, data_cfg) -> (features {name: np.ndarray [N, ...]}, aux)
  loss_sums(logits, batch)  -> (nll_sum, weight_sum, correct_sum)  (jax, inside jit)
  score(logits, features, aux, examples, labels, data_cfg) -> (metrics dict, predictions list)
"""
import numpy as np

TASKS = ('classification', 'qa', 'tokens')


def get(task: str):
  # pylint: disable=g-import-not-at-top
  if task == 'classification':
    from lm.tasks import classification as m
  elif task == 'qa':
    from lm.tasks import qa as m
  elif task == 'tokens':
    from lm.tasks import token_classification as m
  else:
    raise ValueError(f'task={task!r}: use one of {TASKS}.')
  return m


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
    out[i, :len(r)] = r
  return out


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
