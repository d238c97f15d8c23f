"""Weighted mixtures of prepared sources (``data.mixture``), read as a pure function of the step.

``data.mixture`` names components, each a data source (the fields of ``data`` it changes:
``source``, ``files``, ``tfds_name``, ...) with a ``weight``; each is prepared once into its own
shards (:func:`lm.data.prepare.ensure`), all with one tokenizer. Global row ``r`` of step ``s``
reads the component that ``u = frac(shift(seed) + s * (sqrt(2) - 1) + r / phi)`` falls in,
against the cumulative weights in force at ``s``, and is built by that component's batcher from
the same ``[seed, s, r]`` rng a plain batcher would use. So the choice and the row are pure
functions of (seed, step, row): a resumed run sees an uninterrupted run's batches, each process
reads only its rows, and 1 or N processes read the same rows. ``u`` is a 2-d Kronecker
(low-discrepancy) sequence over (step, row), so each step's share is within a few rows of the
weights and the share over many steps within a fraction of a percent, where independent draws
would spread binomially.

Weights change at a step, never with the run's history: ``data.mixture_schedule`` holds
``(step, name, weight)`` triples, each setting that component's weight from that step on. To
change the weights when resuming at step S, resume with triples at S: steps before S are as
they were, and the resumed run equals an uninterrupted run with the same schedule.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Optional

import ml_collections
import numpy as np

from lm.data import prepare
from lm.data import pretrain
from lm.data import shards

# The fields of `data` a component may set (what decides a source's prepared shards), and its
# weight; the tokenizer, seq_len and objective fields are the mixture's, shared by every source.
SOURCE_FIELDS = (
  'source',
  'files',
  'tfds_name',
  'data_dir',
  'split',
  'text_key',
  'max_documents',
  'eval_fraction',
  'prepared_dir',
  'prepare_workers',
  'shard_mb',
)
# u's increments per row and per step: irrationals independent over the rationals, so (step,
# row) never repeat a pattern; 1/phi spreads the most evenly.
ROW_STEP, STEP_STEP = (5**0.5 - 1) / 2, 2**0.5 - 1
SHIFT_STREAM = 1  # rng [seed, SHIFT_STREAM]: the run's shift, apart from the rows' [seed, step, r]


@dataclasses.dataclass
class Source:
  """One prepared component: its name ('' without a mixture), directory and manifest."""

  name: str
  directory: str
  manifest: dict


class Schedule:
  """Each component's weight as a function of the step: its ``weight``, then the latest
  ``(step, name, weight)`` of ``data.mixture_schedule`` at or before the step."""

  def __init__(self, names, weights, changes=()):
    self.names = list(names)
    index = {n: i for i, n in enumerate(self.names)}
    phases = {0: np.asarray(weights, np.float64)}
    for start, name, weight in sorted((int(s), str(n), float(w)) for s, n, w in changes):
      if name not in index:
        raise ValueError(
          f'data.mixture_schedule names {name!r}, not a component of data.mixture: use one of '
          f'{self.names}.'
        )
      if start < 0:
        raise ValueError(f'data.mixture_schedule step {start} is negative: use a step >= 0.')
      w = phases.setdefault(start, phases[max(p for p in phases if p <= start)].copy())
      w[index[name]] = weight
    self.starts = sorted(phases)
    for start in self.starts:
      w = phases[start]
      if (w < 0).any() or not w.sum() > 0 or not np.isfinite(w).all():
        raise ValueError(
          f'data.mixture weights from step {start} are {self.describe_weights(w)}: each must be '
          '>= 0 and their sum > 0.'
        )
    # divided by its own last sum, each ends at exactly 1.0: every u < 1 falls in a component
    self.cumulative = [np.cumsum(phases[s]) / np.cumsum(phases[s])[-1] for s in self.starts]

  def phase(self, step: int) -> int:
    """Index of the phase in force at ``step``."""
    return int(np.searchsorted(self.starts, step, side='right') - 1)

  def weights(self, step: int) -> np.ndarray:
    """Normalised weights in force at ``step``."""
    return np.diff(self.cumulative[self.phase(step)], prepend=0.0)

  def describe_weights(self, w) -> str:
    return ', '.join(f'{n}={float(x):.4g}' for n, x in zip(self.names, w))

  def describe(self, step: int) -> str:
    return f'data mixture from step {step}: {self.describe_weights(self.weights(step))}'

  def choose(self, seed: int, step: int, rows) -> np.ndarray:
    """Component index of each global row of ``step``: a pure function of (seed, step, row)."""
    shift = np.random.default_rng([seed, SHIFT_STREAM]).random()
    u = (shift + int(step) * STEP_STEP + np.asarray(rows, np.float64) * ROW_STEP) % 1.0
    return np.searchsorted(self.cumulative[self.phase(step)], u, side='right')


def components(data_cfg) -> list:
  """[(name, the component's data config, weight)] of ``data.mixture``, by name; [] for none.
  A component's config is ``data`` with the component's source fields (and its own prepared
  directory, or the cache's)."""
  mixture = data_cfg.get('mixture') or {}
  shared = {k: v for k, v in data_cfg.to_dict().items() if k not in ('mixture', 'mixture_schedule')}
  out = []
  for name, comp in sorted(mixture.items()):
    comp = dict(comp)
    unknown = sorted(set(comp) - set(SOURCE_FIELDS) - {'weight'})
    if unknown:
      raise ValueError(
        f'data.mixture.{name} sets {unknown}: a component sets only its source ({SOURCE_FIELDS})'
        ' and weight; the tokenizer and sequence fields are data.*, shared by every component.'
      )
    if 'weight' not in comp:
      raise ValueError(f'data.mixture.{name} has no weight: set data.mixture.{name}.weight.')
    fields = dict(shared, prepared_dir=None)
    fields.update({k: v for k, v in comp.items() if k != 'weight'})
    out.append((name, ml_collections.ConfigDict(fields), comp['weight']))
  return out


def schedule(data_cfg) -> Schedule:
  """The weights of ``data.mixture`` over steps (checked: one line per mistake)."""
  comps = components(data_cfg)
  return Schedule([n for n, _, _ in comps], [w for _, _, w in comps],
                  data_cfg.get('mixture_schedule') or ())  # fmt: skip


def ensure(data_cfg, process_index: int = 0):
  """([Source] and the shared tokenizer): each component prepared once into its own shards,
  tokenized with ``data.tokenizer`` (or, without a path, the first component's trained one).
  Without a mixture: the one prepared source of ``data``, named ''."""
  comps = components(data_cfg)
  if not comps:
    directory, manifest, tok = prepare.ensure(data_cfg, process_index)
    return [Source('', directory, manifest)], tok
  schedule(data_cfg)  # a bad mixture fails before anything is prepared
  out, tok = [], None
  for name, cfg, _ in comps:
    if tok is not None and not cfg.tokenizer.path:
      cfg.tokenizer.path = os.path.join(out[0].directory, shards.TOKENIZER)
    directory, manifest, own = prepare.ensure(cfg, process_index)
    if tok is not None and own.hf.to_str() != tok.hf.to_str():
      raise ValueError(
        f'data.mixture.{name} was prepared in {directory} with another tokenizer than '
        f'data.mixture.{out[0].name}: every component needs one tokenizer (set '
        'data.tokenizer.path, or point its prepared_dir elsewhere).'
      )
    out.append(Source(name, directory, manifest))
    tok = tok or own
  return out, tok


class MixtureBatcher(pretrain.Batcher):
  """Rows of several batchers (one per component, same objective and shapes), each row from
  the component :meth:`Schedule.choose` picks for it. ``log(step, text)`` hears the weights in
  force at the first step read and at each phase change."""

  def __init__(
    self,
    batchers: list,
    mix: Schedule,
    seed: int,
    log: Optional[Callable[[int, str], None]] = None,
  ):
    sizes = {b.batch_size for b in batchers}
    if len(sizes) != 1 or len(batchers) != len(mix.names):
      raise ValueError(f'{len(batchers)} batchers of sizes {sizes} for {mix.names}.')
    super().__init__(sizes.pop(), seed)
    self.batchers, self.mix, self.log, self._phase = batchers, mix, log, None

  def rows(self, step: int, rows) -> list:
    rows = list(rows)
    chosen = self.mix.choose(self.seed, step, rows)
    if self.row_log:  # each row with the source it was read from
      pretrain.log_rows(self.row_log, step, rows, [self.mix.names[k] for k in chosen])
    return [self.batchers[k].row_at(step, r) for k, r in zip(chosen, rows)]

  def get_batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict:
    phase = self.mix.phase(step)
    if phase != self._phase and self.log is not None:
      self.log(int(step), self.mix.describe(step))
    self._phase = phase
    return super().get_batch(step, process_index, process_count)


def batcher(data_cfg, batchers: list, seed: int, log=None) -> pretrain.Batcher:
  """The training batcher over the sources' batchers: the one batcher itself without a
  mixture (today's batches, bit for bit), else their :class:`MixtureBatcher`."""
  if not data_cfg.get('mixture'):
    (only,) = batchers
    return only
  return MixtureBatcher(batchers, schedule(data_cfg), seed, log)


def main(argv):
  """``python -m lm.data.prepare``: prepares every source of the config's data (one line each)."""
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top

  for s in ensure(flags.FLAGS.config.data)[0]:
    out = {'prepared_dir': s.directory, 'splits': s.manifest['splits']}
    print(json.dumps({'source': s.name, **out} if s.name else out))
