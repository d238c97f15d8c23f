"""Text every Python install ships, read for the offline task defaults (data.source=python_docs):
pydoc topic paragraphs, and stdlib callables rendered as ``help()`` shows them. Only the
downstream side of lm/data/python_docs.py's partition is read here (every topic page, the
reserved modules), so no offline example is pretraining text. Shared here because several tasks
label the same text differently."""

from __future__ import annotations

import inspect
import re
import warnings

from lm.data import python_docs as docs_lib
from typing import Optional


def paragraphs(text: str) -> list[str]:
  """Prose paragraphs of a pydoc page: short ones, code blocks (every line indented) and
  headings are dropped, lines are joined."""
  out = []
  for p in re.split(r'\n\s*\n', text):
    lines = p.split('\n')
    if len(p) < 80 or all(l.startswith(' ') for l in lines):  # short, or a code block
      continue
    if len(lines) >= 2 and set(lines[-1].strip()) <= set('*=-'):  # a heading
      continue
    out.append(' '.join(l.strip() for l in lines))
  return out


def documented_objects():
  """(module, name, object, help-style rendering, docstring) of the public callables of the
  stdlib modules reserved for downstream use (never pretraining text)."""
  out = []
  for mod_name, module in docs_lib.modules(downstream=True):
    for name, obj in docs_lib.public_callables(module):
      with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        doc = obj.__doc__
      if not isinstance(doc, str) or len(doc.strip()) < 40:
        continue
      doc = inspect.cleandoc(doc)
      sig = signature(obj)
      out.append((mod_name, name, obj, f'{name}{sig}\n    {doc}', doc))
  return out


def signature(obj) -> str:
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


def summary(doc: str) -> Optional[str]:
  """PEP 257 summary: the docstring's first sentence (up to '. ' or the first blank line)."""
  para = doc.split('\n\n')[0]
  m = re.match(r'(.+?[.!?])(\s|$)', para, re.S)
  s = (m.group(1) if m else para).strip()
  if len(s) < 12 or len(s) > 400:
    return None
  return s
