"""In-context demonstration selection and few-shot scoring (lm/icl/)."""

import importlib
import json
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from conftest import check_fewshot_accuracy, run_script
from lm import icl
from lm import models as M

V = 64


@pytest.fixture(scope='module')
def lm():
  cfg = M.ModelConfig(
    vocab_size=V,
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    mlp_dim=64,
    max_len=64,
    type_vocab_size=0,
    pre_ln=True,
    activation='gelu_tanh',
    layer_norm_eps=1e-5,
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
  )
  model = M.Decoder(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))['params'])
  return icl.LM(model, params, pad_id=0, max_len=64, batch_size=4)


def _seqs(n, seed, lo=6, hi=20):
  rng = np.random.default_rng(seed)
  return [list(rng.integers(2, V, rng.integers(lo, hi))) for _ in range(n)]


class CharTokenizer:
  """Deterministic stand-in for the BPE tokenizer: one id per character."""

  eos_id, pad_id = 1, 0

  def encode(self, text):
    return [2 + ord(c) % (V - 2) for c in text]

  def encode_batch(self, texts):
    return [self.encode(t) for t in texts]


# ------------------------------------------------------------------------------------------------
# Selection on constructed features.


def test_random_reproducible_per_seed_and_differs_across_seeds():
  f = icl.Features(num_pool=50)
  a = icl.select('random', 5, f, query=3, seed=0)
  assert np.array_equal(a, icl.select('random', 5, f, query=3, seed=0))
  assert len(set(a.tolist())) == 5 and all(0 <= i < 50 for i in a)
  assert not np.array_equal(a, icl.select('random', 5, f, query=3, seed=1))
  assert not np.array_equal(a, icl.select('random', 5, f, query=4, seed=0))
  assert len(icl.select('random', 0, f, query=3, seed=0)) == 0


def test_similarity_picks_nearest_constructed():
  rng = np.random.default_rng(0)
  pool = rng.normal(size=(30, 8))
  query = np.stack([3.0 * pool[7], pool[12] + 1e-3 * rng.normal(size=8)])
  f = icl.Features(num_pool=30, pool_emb=pool, query_emb=query)
  assert icl.select('similarity', 1, f, query=0)[0] == 7  # parallel: cosine 1
  assert icl.select('similarity', 1, f, query=1)[0] == 12
  cos = (pool / np.linalg.norm(pool, axis=1, keepdims=True)) @ (query[0] / np.linalg.norm(query[0]))
  assert icl.select('similarity', 5, f, query=0).tolist() == np.argsort(-cos)[:5].tolist()


def test_similarity_picks_identical_item_with_model_embeddings(lm):
  pool = _seqs(12, 1)
  emb_pool, emb_q = lm.embed(pool), lm.embed([pool[5], pool[9]])
  assert emb_pool.shape == (12, 32)
  np.testing.assert_allclose(emb_q[0], emb_pool[5], atol=1e-5)  # padding does not leak
  f = icl.Features(num_pool=12, pool_emb=emb_pool, query_emb=emb_q)
  assert icl.select('similarity', 3, f, query=0)[0] == 5
  assert icl.select('similarity', 3, f, query=1)[0] == 9


@pytest.mark.parametrize('seed', [0, 1])
def test_diversity_covers_all_clusters(seed):
  rng = np.random.default_rng(seed)
  num_clusters, dim = 4, 8
  centers = 10.0 * np.eye(dim)[:num_clusters] + 1.0  # well separated directions (cosine)
  points = np.concatenate([c + 0.1 * rng.normal(size=(10, dim)) for c in centers])
  cluster = np.repeat(np.arange(num_clusters), 10)
  perm = rng.permutation(len(points))
  points, cluster = points[perm], cluster[perm]
  f = icl.Features(num_pool=len(points), pool_emb=points)
  picks = icl.select('diversity', num_clusters, f, seed=seed)
  assert sorted(cluster[picks].tolist()) == list(range(num_clusters))
  # each pick is its cluster's member nearest the (normalised) centroid
  x = points / np.linalg.norm(points, axis=1, keepdims=True)
  for p in picks:
    members = np.flatnonzero(cluster == cluster[p])
    centroid = x[members].mean(0)
    assert p == members[np.argmin(np.linalg.norm(x[members] - centroid, axis=1))]


def test_difficulty_follows_known_loss_order():
  loss = np.array([2.0, 0.5, 3.0, 1.0, 4.0, 0.1])
  f = icl.Features(num_pool=6, pool_loss=loss)
  assert icl.select('difficulty', 3, f).tolist() == [5, 1, 3]  # easiest first
  assert icl.select('difficulty', 3, f, difficulty='hard').tolist() == [4, 2, 0]
  with pytest.raises(ValueError):
    icl.select('difficulty', 3, f, difficulty='medium')


def test_gradient_ranks_parallel_gradient_first_constructed():
  rng = np.random.default_rng(0)
  pool = rng.normal(size=(20, 50))
  f = icl.Features(num_pool=20, pool_grad=pool, query_grad=np.stack([0.01 * pool[13]]))
  assert icl.select('gradient', 3, f, query=0)[0] == 13


def test_unknown_strategy_and_missing_features_raise():
  with pytest.raises(ValueError, match='unknown strategy'):
    icl.select('bm25', 2, icl.Features(num_pool=3), query=0)
  with pytest.raises(ValueError, match='pool_emb'):
    icl.select('similarity', 2, icl.Features(num_pool=3), query=0)


# ------------------------------------------------------------------------------------------------
# Model side.


def _log_softmax(logits):
  x = np.asarray(logits, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _logits(lm, seq):
  """Unpadded, unbatched full logits [T, V] (jitted: eager dispatch is slow)."""
  if not hasattr(lm, '_test_apply'):
    lm._test_apply = jax.jit(lambda p, ids: lm.model.apply({'params': p}, ids))
  return lm._test_apply(lm.params, jnp.asarray([list(seq)], jnp.int32))[0]


def _direct_logprob(lm, prompt, cand):
  """The full logits of prompt + candidate, log_softmax in numpy, label tokens summed."""
  lp = _log_softmax(_logits(lm, list(prompt) + list(cand)))
  return sum(lp[len(prompt) - 1 + j, c] for j, c in enumerate(cand))


def test_scorer_equals_direct_log_softmax_sum(lm):
  prompts = [_seqs(1, 2, 20, 21)[0], *_seqs(2, 3, 9, 10)]  # lengths 20, 9, 9
  cands = [[5], [7, 8], [9, 10, 11]]
  got_sum = lm.score_candidates([(p, cands) for p in prompts], 'sum')  # batch of 4 rows: 3 calls
  got_mean = lm.score_candidates([(p, cands) for p in prompts], 'mean')
  for p, s, m in zip(prompts, got_sum, got_mean):
    want = np.array([_direct_logprob(lm, p, c) for c in cands])
    np.testing.assert_allclose(s, want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(m, want / [1, 2, 3], rtol=1e-5, atol=1e-4)
  alone = lm.score_candidates([(prompts[1], cands)], 'sum')[0]
  np.testing.assert_allclose(alone, got_sum[1], rtol=1e-5, atol=1e-5)


def test_mean_loss_equals_direct(lm):
  seqs = _seqs(5, 3, lo=8, hi=10)
  got = lm.mean_loss(seqs)
  for s, g in zip(seqs, got):
    lp = _log_softmax(_logits(lm, s))
    want = -np.mean([lp[t - 1, s[t]] for t in range(1, len(s))])
    np.testing.assert_allclose(g, want, rtol=1e-5)


@pytest.mark.slow  # the fast tier keeps one case of this area (3-minute budget)
def test_vmap_gradients_equal_per_example_loop(lm):
  seqs = _seqs(5, 4, lo=8, hi=10)  # 5 rows, batch 4: two calls, second padded with dummy rows
  weights = [[0, 0] + [1] * (len(s) - 2) for s in seqs]
  got = lm.gradients(seqs, weights, which='last')
  selected, rest = lm.split_params('last')
  assert set(selected) == {'ln_final', 'stack'} and list(selected['stack']) == ['layers_1']
  grad = jax.jit(jax.grad(lm.example_loss))  # unpadded lengths 8 and 9: two compilations
  for s, w, g in zip(seqs, weights, got):  # unpadded, one at a time
    one = grad(selected, rest, jnp.asarray(s), jnp.ones(len(s), jnp.int32), jnp.asarray(w))
    np.testing.assert_allclose(g, ravel_pytree(one)[0], rtol=1e-4, atol=1e-6)
  assert np.abs(got).sum() > 0
  sketched = lm.gradients(seqs, weights, which='all', dim=32)
  assert sketched.shape == (5, 32) and np.isfinite(sketched).all()


def test_gradient_strategy_ranks_identical_example_first(lm):
  pool = _seqs(10, 5)
  w = [[0] + [1] * (len(s) - 1) for s in pool]
  f = icl.Features(
    num_pool=10,
    pool_grad=lm.gradients(pool, w),
    query_grad=lm.gradients([pool[6], pool[2]], [w[6], w[2]]),
  )
  assert icl.select('gradient', 3, f, query=0)[0] == 6
  assert icl.select('gradient', 3, f, query=1)[0] == 2


def test_prompt_fits_max_len_and_drops_furthest_demos():
  tok = CharTokenizer()
  p = icl.Prompter(
    tok,
    ['a', 'b'],
    ['yes', 'no'],
    max_len=64,
    input_prefix='T:',
    output_prefix='|',
    separator=';',
    demo_tokens=20,
    query_tokens=10,
  )
  long = 'x' * 100
  for k in range(0, 9):
    ids, kept = p.prompt([(long, 'a')] * k, long)
    assert len(ids) + max(len(c) for c in p.candidates) <= 64
    assert kept <= k
  ids, kept = p.prompt([('hello', 'b')], 'query')
  assert kept == 1 and ids == tok.encode('T:hello|') + p.candidates[1] + tok.encode(';T:query|')
  _, kept = p.prompt([(long, 'a')] * 8, long)
  assert 0 < kept < 8  # shares under min_demo_tokens: the earliest demos go


def test_run_fewshot_grid_and_inspectable_selections(lm):
  p, pool, test, fs = _fewshot_setup(
    icl.STRATEGIES, ks=(0, 1, 2), seed=0, sizes=(12, 4), orderings=2
  )
  r = icl.run_fewshot(lm, p, pool, test, fs)
  assert r['runs'] == 4
  for s in icl.STRATEGIES:
    assert r['accuracy'][s]['0'] == r['accuracy']['random']['0']  # k=0: one zero-shot run
    assert len(r['accuracy'][s]['0']['runs']) == 1
    for k in ('1', '2'):
      cell = r['accuracy'][s][k]
      assert len(cell['runs']) == 4
      assert cell['demos_in_prompt'] == int(k)
  for ex in r['examples']:
    for s in icl.STRATEGIES:
      runs = ex['selections'][s]['2']
      assert len(runs) == 4
      for run in runs:
        assert len(run['pool_indices']) == 2 and all(0 <= i < 12 for i in run['pool_indices'])
        assert run['prediction'] in ('0', '1') and len(run['scores']) == 2
  check_fewshot_accuracy(r)
  # query-independent strategies choose the same set for every test example
  sets = {frozenset(ex['selections']['difficulty']['2'][0]['pool_indices']) for ex in r['examples']}
  assert len(sets) == 1
  table = icl.format_table(r)
  for s in icl.STRATEGIES:
    assert s in table
  assert 'k=0' in table and 'k=2' in table
  json.dumps(r)


# ------------------------------------------------------------------------------------------------
# End to end.


@pytest.mark.slow
def test_eval_py_fewshot_table(tmp_path, pretrained_gpt):
  wd = str(pretrained_gpt)
  out = str(tmp_path / 'fewshot.json')
  proc = run_script(
    'eval.py',
    '--config=configs/fewshot.py',
    f'--checkpoint={wd}',
    f'--output={out}',
    '--config.fewshot.num_test=6',
    '--config.fewshot.pool_size=16',
    '--config.fewshot.ks=0,1,2',
    '--config.fewshot.seeds=0,1',
  )
  lines = proc.stdout.splitlines()
  header = next(l for l in lines if l.startswith('| strategy'))
  assert all(f'k={k}' in header for k in (0, 1, 2))
  for s in icl.STRATEGIES:
    row = next(l for l in lines if l.startswith(f'| {s} '))
    assert row.count('±') == 3
  with open(out, encoding='utf-8') as f:
    r = json.load(f)
  assert set(r['accuracy']) == set(icl.STRATEGIES) and r['num_test'] == 6 and r['runs'] == 2
  check_fewshot_accuracy(r)
  # the printed table shows the JSON's means
  for s in icl.STRATEGIES:
    row = next(l for l in lines if l.startswith(f'| {s} '))
    for k in ('0', '1', '2'):
      assert f'{r["accuracy"][s][k]["mean"]:.3f} ± {r["accuracy"][s][k]["std"]:.3f}' in row
  ex = r['examples'][0]
  for s in icl.STRATEGIES:
    for run in ex['selections'][s]['1']:
      i = run['pool_indices'][0]
      assert r['pool'][i]['text'] and run['prediction'] in r['labels']
  assert os.path.exists(out)


# ------------------------------------------------------------------------------------------------
# The strategy registry: a new strategy is one module plus its name in the config.

FIRST_K = '''"""The first k pool items, the same for every test example."""
import numpy as np

QUERY_INDEPENDENT = True
CALLS = []  # (k, query) per call, for the test


def select(k, features, query, seed, options):
  CALLS.append((k, query))
  return np.arange(min(k, features.num_pool))
'''

FARTHEST = '''"""The k pool items least similar to the query by the model's embeddings."""
from lm.icl import features as F

NEEDS = ('pool_emb', 'query_emb')


def select(k, features, query, seed, options):
  return F.cosine_rank(features.pool_emb, -features.query_emb[query], k)
'''


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
  """Writes modules under tmp_path (a path: source) importable for one test."""
  monkeypatch.syspath_prepend(str(tmp_path))
  names = []

  def write(files):
    for path, src in files.items():
      (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
      (tmp_path / path).write_text(src)
      names.append(path[:-3].replace('/', '.'))
    importlib.invalidate_caches()

  yield write
  for n in names:
    sys.modules.pop(n, None)


def _fewshot_setup(strategies, ks=(0, 2), seed=1, sizes=(8, 3), orderings=1):
  """(prompter, pool, test, few-shot config) over random 4-word texts with labels 0/1."""
  tok = CharTokenizer()
  rng = np.random.default_rng(seed)
  words = ['alpha', 'beta', 'gamma', 'delta']
  make = lambda n: [
    {'text': ' '.join(rng.choice(words, 4)), 'label': str(rng.integers(2))} for _ in range(n)
  ]
  p = icl.Prompter(
    tok,
    ['0', '1'],
    ['no', 'yes'],
    max_len=64,
    input_prefix='T:',
    output_prefix='|',
    separator=';',
    demo_tokens=12,
    query_tokens=12,
  )
  fs = ml_collections.ConfigDict(
    dict(
      strategies=tuple(strategies),
      ks=ks,
      seeds=(0, 1),
      orderings=orderings,
      score='mean',
      difficulty='easy',
      gradient_params='last',
      gradient_dim=0,
    )
  )
  return p, make(sizes[0]), make(sizes[1]), fs


def test_new_strategy_module_named_in_config_is_used(lm, user_modules):
  user_modules({'first_k.py': FIRST_K})
  p, pool, test, fs = _fewshot_setup(['first_k', 'random'])
  r = icl.run_fewshot(lm, p, pool, test, fs)
  for ex in r['examples']:
    for run in ex['selections']['first_k']['2']:
      assert sorted(run['pool_indices']) == [0, 1]
  assert '| first_k ' in icl.format_table(r)
  import first_k  # pylint: disable=g-import-not-at-top

  assert first_k.CALLS == [(2, None), (2, None)]  # query-independent: once per (k, seed)
  f = icl.compute_features(lm, p, pool, test, ['first_k', 'random'])
  assert all(getattr(f, n) is None for n in ('pool_emb', 'query_emb', 'pool_loss', 'pool_grad'))


def test_new_strategy_gets_the_features_it_declares(lm, user_modules):
  user_modules({'my_strategies/farthest.py': FARTHEST})  # a module path: package.module
  p, pool, test, fs = _fewshot_setup(['my_strategies.farthest'])
  f = icl.compute_features(lm, p, pool, test, fs.strategies, fs)
  assert f.pool_emb.shape == (8, 32) and f.query_emb.shape == (3, 32)
  assert f.pool_loss is None and f.pool_grad is None and f.query_grad is None
  r = icl.run_fewshot(lm, p, pool, test, fs)
  for qi, ex in enumerate(r['examples']):
    far = icl.cosine_rank(f.pool_emb, f.query_emb[qi], 8)[-2:]  # the two least similar
    for run in ex['selections']['my_strategies.farthest']['2']:
      assert sorted(run['pool_indices']) == sorted(far.tolist())


def test_unknown_or_broken_strategy_is_a_clear_error(user_modules):
  with pytest.raises(ValueError, match=r"unknown strategy 'bm25': use one of \('random'"):
    icl.strategies.get('bm25')
  for name in ('no_such_pkg.bm25', 'bm-25', '', '.similarity'):
    with pytest.raises(ValueError, match='unknown strategy'):
      icl.strategies.get(name)
  with pytest.raises(ValueError, match='defines no select'):
    icl.strategies.get('json')  # a module, but not a strategy
  user_modules(
    {
      'needs_bm25.py': 'NEEDS = ("pool_bm25",)\ndef select(*a):\n  return []\n',
      'broken.py': 'import no_such_dependency_xyz\ndef select(*a):\n  return []\n',
    }
  )
  with pytest.raises(ValueError, match=r"needs \['pool_bm25'\]"):
    icl.strategies.get('needs_bm25')
  with pytest.raises(ModuleNotFoundError, match='no_such_dependency_xyz'):
    icl.strategies.get('broken')  # its own missing import is not an unknown strategy
  for names in (('similarity', 'bm25'), ('similarity,bm25',)):  # the second: a CLI override
    fs = ml_collections.ConfigDict(dict(strategies=names, ks=(1,), seeds=(0,), orderings=1))
    with pytest.raises(ValueError, match="fewshot.strategies: unknown strategy 'bm25'"):
      icl.run_fewshot(None, None, [], [], fs)  # before any model work


@pytest.mark.slow  # compiles every LM function twice (1 and 8 devices)
def test_fewshot_sharded_over_8_devices_equals_1_device(lm):
  """The few-shot grid with its scoring, losses, embeddings and gradients split over an 8-device
  mesh (rows over `data`) gives the 1-device scores and decisions."""
  from lm import sharding  # noqa: PLC0415

  mesh = sharding.make_mesh((-1, 1, 1))
  assert mesh.shape['data'] == 8
  sharded = icl.LM(lm.model, lm.params, pad_id=0, max_len=64, batch_size=4, mesh=mesh)
  assert sharded.batch_size == 8
  p, pool, test, fs = _fewshot_setup(icl.STRATEGIES, ks=(0, 2), seed=0, sizes=(8, 3))
  one, eight = icl.run_fewshot(lm, p, pool, test, fs), icl.run_fewshot(sharded, p, pool, test, fs)
  assert one['accuracy'] == eight['accuracy']
  for a, b in zip(one['examples'], eight['examples']):
    for s in icl.STRATEGIES:
      for k in a['selections'][s]:
        for ra, rb in zip(a['selections'][s][k], b['selections'][s][k]):
          assert ra['pool_indices'] == rb['pool_indices'] and ra['prediction'] == rb['prediction']
          np.testing.assert_allclose(rb['scores'], ra['scores'], rtol=1e-5, atol=1e-5)
