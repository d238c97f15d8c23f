"""Weighted data mixtures (lm/data/mixture.py): shares, schedule changes at resume, process
slicing, the unchanged default and bad configs. A train.py job on a mixture (each source
prepared with the first one's tokenizer, per-source eval in train.py and eval.py), on 1 process
and on 2, is tests/test_scale.py's pretraining job."""

import types

import ml_collections
import numpy as np
import pytest

from lm import defaults
from lm.data import mixture
from lm.data.pretrain import CLMBatcher, TokenizedCorpus

EOS, SEQ, BATCH = 1, 16, 8
RANGES = {'a': (10, 200), 'b': (200, 400)}  # each source's ids: a token names its source


def corpus(lo, hi, seed):
  rng = np.random.default_rng(seed)
  return TokenizedCorpus.from_lists([rng.integers(lo, hi, rng.integers(20, 80)) for _ in range(30)])


@pytest.fixture(scope='module')
def sources():
  """One CLM batcher per source (a tokenizer only lends its eos id to a CLM batcher)."""
  tok = types.SimpleNamespace(eos_id=EOS, sep_id=None)
  return [CLMBatcher(corpus(*RANGES[n], seed=i), tok, SEQ, BATCH, 0) for i, n in enumerate(RANGES)]


def source_of_rows(batch) -> np.ndarray:
  """Each row's source, read from its tokens (eos aside), checking a row never mixes sources."""
  ids = batch['input_ids']
  in_b = (ids >= RANGES['b'][0]) & (ids != EOS)
  in_a = (ids < RANGES['a'][1]) & (ids != EOS)
  assert not (in_a.any(1) & in_b.any(1)).any()
  return in_b.any(1).astype(int)


def test_token_shares_match_weights_over_1000_steps(sources):
  """0.7 / 0.3 over 1,000 steps of 8 rows: the tokens read from each source (traced by their
  ids) are within 1% of its weight; every row is seq_len tokens of one source."""
  batcher = mixture.MixtureBatcher(sources, mixture.Schedule(['a', 'b'], [0.7, 0.3]), 0)
  per_row = np.concatenate([source_of_rows(batcher.get_batch(s)) for s in range(1000)])
  tokens_b = per_row.sum() * SEQ
  share_b = tokens_b / (len(per_row) * SEQ)
  assert abs(share_b - 0.3) < 0.003 and abs((1 - share_b) - 0.7) < 0.007, share_b
  # every step's own share is within a row of 30%: a low-discrepancy choice, not coin flips
  assert np.abs(per_row.reshape(1000, BATCH).sum(1) - 0.3 * BATCH).max() < 1
  for seed in range(1, 6):  # any seed, 8 or 256 rows: within 0.1% of the weight
    for rows in (np.arange(BATCH), np.arange(256)):
      chosen = np.stack([batcher.mix.choose(seed, s, rows) for s in range(1000)])
      assert abs(chosen.mean() - 0.3) < 0.0003, (seed, len(rows), chosen.mean())


def test_rows_are_their_sources_own_rows(sources):
  """Row r of step s from source k is row r of step s of k's plain batcher, bit for bit; a
  one-source mixture is the plain batcher; no mixture configured gives the plain batcher."""
  mix = mixture.MixtureBatcher(sources, mixture.Schedule(['a', 'b'], [0.5, 0.5]), 0)
  for step in (0, 7, 123):
    batch, chosen = mix.get_batch(step), mix.mix.choose(0, step, range(BATCH))
    assert set(chosen) == {0, 1}
    for r, k in enumerate(chosen):
      plain = sources[k].get_batch(step)
      assert all(np.array_equal(batch[f][r], plain[f][r]) for f in plain)
  alone = mixture.MixtureBatcher(sources[:1], mixture.Schedule(['a'], [1.0]), 0)
  assert all(np.array_equal(alone.get_batch(5)[f], sources[0].get_batch(5)[f]) for f in batch)
  assert mixture.batcher(defaults.pretraining().data, sources[:1], 0) is sources[0]
  # the plain batcher's rows are still np.random.default_rng([seed, step, r])'s
  row = sources[0]._row(np.random.default_rng([0, 9, 3]))
  assert all(np.array_equal(sources[0].get_batch(9)[f][3], row[f]) for f in row)


def test_schedule_change_applies_from_its_step_and_resume_equals_uninterrupted(sources):
  """Weights changed at step 500: steps before it choose as the unchanged run, from it on the
  new weights (0.2 / 0.8 within 1%); a run resumed at 700 reads the uninterrupted run's
  batches, and each logs the weights in force where it starts and where a phase begins."""
  before = mixture.Schedule(['a', 'b'], [0.7, 0.3])
  after = mixture.Schedule(['a', 'b'], [0.7, 0.3], ((500, 'a', 0.2), (500, 'b', 0.8)))
  rows = np.arange(64)
  for step in (0, 250, 499):
    assert np.array_equal(before.choose(0, step, rows), after.choose(0, step, rows))
  share_b = np.mean([after.choose(0, s, rows) for s in range(500, 1000)])
  assert abs(share_b - 0.8) < 0.008, share_b
  assert np.mean([before.choose(0, s, rows) for s in range(500, 1000)]) == pytest.approx(0.3, 0.01)

  logs = {'run': [], 'resumed': []}
  run = mixture.MixtureBatcher(sources, after, 0, lambda s, t: logs['run'].append((s, t)))
  resumed = mixture.MixtureBatcher(sources, after, 0, lambda s, t: logs['resumed'].append((s, t)))
  batches = {s: run.get_batch(s) for s in range(495, 705)}
  for s in (700, 701, 704):
    assert all(np.array_equal(resumed.get_batch(s)[f], batches[s][f]) for f in batches[s])
  assert logs['run'] == [
    (495, 'data mixture from step 495: a=0.7, b=0.3'),
    (500, 'data mixture from step 500: a=0.2, b=0.8'),
  ]
  assert logs['resumed'] == [(700, 'data mixture from step 700: a=0.2, b=0.8')]


def test_two_processes_read_the_rows_of_one(sources):
  mix = mixture.MixtureBatcher(sources, mixture.Schedule(['a', 'b'], [0.7, 0.3]), 3)
  for step in (0, 41, 999):
    whole = mix.get_batch(step)
    for pc in (2, 4):
      parts = [mix.get_batch(step, pi, pc) for pi in range(pc)]
      for f in whole:
        assert np.array_equal(np.concatenate([p[f] for p in parts]), whole[f])


def data_config(**comps):
  c = defaults.pretraining().data
  c.mixture = ml_collections.ConfigDict(comps)
  return c


@pytest.mark.parametrize(
  'comps, schedule, message',
  [
    (dict(a=dict(weight=-1.0), b=dict(weight=1.0)), (), r'a=-1, b=1: each must be >= 0'),
    (dict(a=dict(weight=0.0), b=dict(weight=0.0)), (), r'their sum > 0'),
    (dict(a=dict(weight=1.0), b=dict(weight=1.0)), ((9, 'b', -2.0),), r'from step 9 are a=1, b=-2'),
    (dict(a=dict(weight=1.0)), ((9, 'c', 1.0),), r"names 'c', not a component"),
    (dict(a=dict(weight=1.0, seq_len=64)), (), r"data.mixture.a sets \['seq_len'\]"),
    (dict(a=dict(weight=1.0, tokenizer=dict(path='t'))), (), r'tokenizer and sequence fields'),
    (dict(a=dict(source='files')), (), r'data.mixture.a has no weight'),
  ],
)
def test_bad_mixture_fails_in_one_line(comps, schedule, message):
  c = data_config(**comps)
  c.mixture_schedule = schedule
  with pytest.raises(ValueError, match=message) as e:
    mixture.ensure(c)
  assert '\n' not in str(e.value)
