"""Demonstration-selection strategies: one module each, found by name.

A strategy is a module defining

  def select(k, features, query, seed, options):  # -> k pool indices, best first
  NEEDS = ('pool_emb', ...)  # the `Features` fields it reads (default: none)
  QUERY_INDEPENDENT = False  # True: one selection per (k, seed) serves every test example

`query` indexes the query rows of `features` (None for a query-independent strategy), `options`
is the fewshot config (a mapping: read with .get and a default). `get(name)` finds the module: a
name without dots is first looked up in this package (the built-ins, STRATEGIES), anything else
is imported as a module path (``mypkg.bm25``, or ``bm25`` on sys.path), as big_vision finds its
evaluators. So a new strategy is one module plus its name in ``config.fewshot.strategies``:
`run_fewshot` computes the union of the chosen strategies' NEEDS and nothing more.
"""

from __future__ import annotations

import importlib
import re
import types
from typing import Iterable, Optional, Union

import numpy as np

from lm.icl import features as features_lib

STRATEGIES = ('random', 'similarity', 'diversity', 'difficulty', 'gradient')  # built-in, default

Strategy = Union[str, types.ModuleType]
_NAME = re.compile(r'[A-Za-z_]\w*(\.[A-Za-z_]\w*)*')


def _unknown(name) -> ValueError:
  return ValueError(
    f'unknown strategy {name!r}: use one of {STRATEGIES} or the import path of a '
    'module defining select(k, features, query, seed, options) '
    '(see lm/icl/strategies/__init__.py).'
  )


def _import(path: str) -> Optional[types.ModuleType]:
  """The module at `path`, or None when there is none (an error inside it still raises)."""
  try:
    return importlib.import_module(path)
  except ModuleNotFoundError as e:
    if e.name and (path == e.name or path.startswith(e.name + '.')):
      return None
    raise


def get(name: Strategy) -> types.ModuleType:
  """The strategy module for `name` (a module passes through), checked for select() and NEEDS."""
  if isinstance(name, types.ModuleType):
    module = name
  else:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
      raise _unknown(name)
    module = (_import(f'{__name__}.{name}') if '.' not in name else None) or _import(name)
    if module is None:
      raise _unknown(name)
  if not callable(getattr(module, 'select', None)):
    raise ValueError(
      f'strategy {name!r}: module {module.__name__} defines no '
      'select(k, features, query, seed, options).'
    )
  unknown = [n for n in needs([module]) if n not in features_lib.COMPUTE]
  if unknown:
    raise ValueError(
      f'strategy {name!r} needs {unknown}: the features are {tuple(features_lib.COMPUTE)}.'
    )
  return module


def needs(strategies: Iterable[Strategy]) -> tuple[str, ...]:
  """The `Features` fields the strategies read, each once."""
  out = []
  for s in strategies:
    module = s if isinstance(s, types.ModuleType) else get(s)
    out += [n for n in getattr(module, 'NEEDS', ()) if n not in out]
  return tuple(out)


def query_independent(strategy: Strategy) -> bool:
  return bool(getattr(get(strategy), 'QUERY_INDEPENDENT', False))


def choose(
  strategy: Strategy,
  k: int,
  features: features_lib.Features,
  query: Optional[int],
  seed: int,
  options=None,
) -> np.ndarray:
  """`select` with the fewshot config as one mapping (what run_fewshot passes)."""
  module = get(strategy)
  if k <= 0:
    return np.zeros(0, np.int64)
  for n in getattr(module, 'NEEDS', ()):
    if getattr(features, n) is None:
      raise ValueError(
        f'strategy {strategy if isinstance(strategy, str) else module.__name__!r} '
        f'needs Features.{n}; compute_features() fills it when the strategy is '
        'requested.'
      )
  return np.asarray(module.select(k, features, query, seed, options or {}), np.int64)


def select(
  strategy: Strategy,
  k: int,
  features: features_lib.Features,
  query: Optional[int] = None,
  seed: int = 0,
  **options,
) -> np.ndarray:
  """Pool indices of k demonstrations for test example `query` (an index into the query rows
  of `features`), best first; `options` as the fewshot config's (e.g. difficulty='hard')."""
  return choose(strategy, k, features, query, seed, options)


QUERY_INDEPENDENT = tuple(s for s in STRATEGIES if query_independent(s))
