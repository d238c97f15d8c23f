"""The offline lm-evaluation-harness tasks of configs/harness/, built from the downstream side of
Python's docs (`lm.data.python_docs`: topic pages and the reserved modules' docstrings, never
pretraining text) into JSONL files beside their YAMLs:

  pydoc_mc.jsonl    multiple choice: a callable's one-line summary -> its name among 4
  pydoc_ppl.jsonl   rolling perplexity: topic pages
  pydoc_gen.jsonl   generation, exact match: a callable's name -> the module that defines it

  python -m lm.data.harness_tasks [--out configs/harness]

The files are committed: the tasks stay the same whatever Python evaluates them."""

import argparse
import hashlib
import json
import os
import random

from lm.data import python_docs

MAX_EXAMPLES = 200
MAX_PAGES = 60
PAGE_CHARS = 2000


def _summary(obj):
  doc = getattr(obj, '__doc__', None)
  if not isinstance(doc, str):
    return None
  first = ' '.join(doc.strip().split('\n\n')[0].split())
  return first if 20 <= len(first) <= 200 and first.endswith('.') else None


def callables() -> list:
  """(module name, callable name, summary) of the reserved modules' documented callables."""
  out = []
  for _, module in python_docs.modules(downstream=True):
    for name, obj in python_docs.public_callables(module):
      s = _summary(obj)
      if s and name not in s:
        out.append((module.__name__, name, s))
  return out


def _rng(key: str) -> random.Random:
  return random.Random(int(hashlib.sha256(key.encode()).hexdigest()[:16], 16))


def build(out_dir: str) -> dict:
  items = callables()
  names = sorted({n for _, n, _ in items})
  pick = sorted(items, key=lambda x: hashlib.sha256(f'{x[0]}.{x[1]}'.encode()).hexdigest())
  mc, gen = [], []
  for module, name, summary in pick[:MAX_EXAMPLES]:
    rng = _rng(f'{module}.{name}')
    wrong = rng.sample([n for n in names if n != name], 3)
    choices = sorted([name, *wrong], key=lambda n: _rng(n + name).random())
    mc.append({'summary': summary, 'choices': choices, 'label': choices.index(name)})
    gen.append({'name': name, 'module': module})
  pages = [
    {'text': page[:PAGE_CHARS]}
    for page in list(python_docs.topic_pages().values())[:MAX_PAGES]
    if len(page) >= 200
  ]
  sets = {'pydoc_mc': mc, 'pydoc_ppl': pages, 'pydoc_gen': gen}
  os.makedirs(out_dir, exist_ok=True)
  for task, rows in sets.items():
    with open(os.path.join(out_dir, f'{task}.jsonl'), 'w', encoding='utf-8') as f:
      for r in rows:
        f.write(json.dumps(r) + '\n')
  return {k: len(v) for k, v in sets.items()}


def texts(directory: str) -> list:
  """Every text of the shipped task files (what the contamination test checks)."""
  out = []
  for name in sorted(os.listdir(directory)):
    if name.endswith('.jsonl'):
      with open(os.path.join(directory, name), encoding='utf-8') as f:
        for line in f:
          row = json.loads(line)
          out += [v for v in row.values() if isinstance(v, str)]
  return out


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', default=os.path.join('configs', 'harness'))
  print(build(parser.parse_args().out))
