"""Few-shot prompts as token ids: demonstrations, then the test input, fitted to `max_len`.

Text: <demo text, truncated>\nTopic: <label>\n\n ... Text: <test text>\nTopic:| <label?>
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence


@dataclasses.dataclass
class Prompter:
  """Builds prompts as token ids: demonstrations truncated to fit `max_len`.

  Each piece is tokenized on its own and the ids concatenated, so a demonstration's tokens
  are the same in every prompt it appears in.
  """

  tokenizer: object
  labels: Sequence[str]
  verbalizers: Sequence[str]
  max_len: int
  input_prefix: str = 'Text: '
  output_prefix: str = '\nTopic:'
  separator: str = '\n\n'
  demo_tokens: int = 48  # at most this many tokens of each demonstration's text
  query_tokens: int = 32  # ... and of the test input's
  min_demo_tokens: int = 4  # below this, the earliest demonstrations are dropped instead
  bos: bool = False

  def __post_init__(self):
    enc = self.tokenizer.encode
    self._pre, self._out, self._sep = (
      enc(self.input_prefix),
      enc(self.output_prefix),
      enc(self.separator),
    )
    self.candidates = [enc(' ' + v) for v in self.verbalizers]
    self._bos = [self.tokenizer.eos_id] if self.bos and self.tokenizer.eos_id is not None else []
    self._cache = {}
    self.label_index = {l: i for i, l in enumerate(self.labels)}

  def text_ids(self, text: str) -> list[int]:
    if text not in self._cache:
      self._cache[text] = self.tokenizer.encode(text)
    return self._cache[text]

  def warm(self, texts):
    todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
    for t, ids in zip(todo, self.tokenizer.encode_batch(todo) if todo else []):
      self._cache[t] = ids

  def input_ids(self, text: str):
    """(ids, weights) of the bare input `Text: <text>` (query budget), weights on the text:
    what the embeddings and the gradients see."""
    t = self.text_ids(text)[: self.query_tokens]
    ids = self._bos + self._pre + t
    return ids, [0] * (len(ids) - len(t)) + [1] * len(t)

  def demo_ids(self, text: str, label: str, budget: Optional[int] = None) -> list[int]:
    budget = self.demo_tokens if budget is None else budget
    return (
      self._pre
      + self.text_ids(text)[:budget]
      + self._out
      + self.candidates[self.label_index[label]]
      + self._sep
    )

  def prompt(self, demos: Sequence[tuple[str, str]], query: str):
    """(prompt ids, number of demonstrations kept): demonstrations then the query.

    What `max_len` leaves after the template and the longest label is shared out: each
    demonstration's text gets an equal share (at most `demo_tokens`, the query counting as one
    more share), the query text what is left (at most `query_tokens`). When a share would fall
    below `min_demo_tokens`, the demonstrations furthest from the query are dropped.
    """
    room = (
      self.max_len
      - len(self._bos)
      - len(self._pre)
      - len(self._out)
      - max(len(c) for c in self.candidates)
    )
    if room < 1:
      raise ValueError(f'max_len={self.max_len} leaves no room for the query text.')
    demos, budget = list(demos), 0
    while demos:
      fixed = sum(len(self.demo_ids('', l, 0)) for _, l in demos)
      budget = min(self.demo_tokens, (room - fixed) // (len(demos) + 1))
      if budget >= self.min_demo_tokens:
        break
      demos = demos[1:]  # drop the one furthest from the query
    ids = list(self._bos)
    for text, label in demos:
      ids += self.demo_ids(text, label, budget)
    left = (
      self.max_len
      - len(ids)
      - len(self._pre)
      - len(self._out)
      - max(len(c) for c in self.candidates)
    )
    q = self._pre + self.text_ids(query)[: min(self.query_tokens, left)] + self._out
    return ids + q, len(demos)
