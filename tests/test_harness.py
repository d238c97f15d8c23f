"""lm.harness against lm-eval's own `hf` backend (HFLM) on random tiny GPT-2 and Llama
directories saved by transformers: the same per-request log-likelihoods (within 1e-4) and is-greedy
flags, rolling log-likelihoods, greedy generations and task scores; and our scores the same at
every batch size and mesh. Offline: the models, tokenizer and task data are local files."""

import functools
import json
import os

import numpy as np
import pytest

os.environ['HF_HUB_OFFLINE'] = '1'
os.environ['HF_DATASETS_OFFLINE'] = '1'
torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
pytest.importorskip('lm_eval')
pytest.importorskip('accelerate')

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from lm import harness  # noqa: E402
from lm.data import tokenizer as tokenizer_lib  # noqa: E402

KINDS = ('gpt2', 'llama')
ATOL = 1e-4  # the bar for per-request log-likelihoods (float32 both sides)
CONTEXTS = [
  'The quick brown',
  'Python is ',  # a trailing space moves to the continuation (_encode_pair)
  'A long context that the model cannot hold whole. ' * 12,  # cut from the left
  'def f(x):',
  'x',
]
REQUESTS = [
  *[(c, ' fox') for c in CONTEXTS],
  ('The quick brown', ' fox jumps over the lazy dog'),
  ('', 'hello world'),  # empty context: the prefix token conditions it
  ('def f(x):', '\n    return x + 1'),
  ('x', 'x'),
]
TEXTS = [
  'The rolling log-likelihood of a text longer than the window: ' + 'several windows. ' * 30,
  'short text',
  'for x in range(10):\n    print(x)\n',
]


def _tokenizer():
  import pydoc_data.topics  # pylint: disable=g-import-not-at-top

  docs = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)[:40]]
  return tokenizer_lib.train_tokenizer(docs, 'bpe', 400)


def _hf_model(kind, tok):
  v, eos = tok.vocab_size, tok.eos_id
  torch.manual_seed(0)
  if kind == 'gpt2':
    cfg = transformers.GPT2Config(
      vocab_size=v,
      n_embd=32,
      n_layer=2,
      n_head=4,
      n_positions=64,
      bos_token_id=eos,
      eos_token_id=eos,
    )
    model = transformers.GPT2LMHeadModel(cfg)
  else:
    cfg = transformers.LlamaConfig(
      vocab_size=v,
      hidden_size=32,
      intermediate_size=48,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      max_position_embeddings=64,
      bos_token_id=eos,
      eos_token_id=eos,
    )
    model = transformers.LlamaForCausalLM(cfg)
  g = torch.Generator().manual_seed(0)
  with torch.no_grad():  # HF's init is near-flat: noise makes every tensor (and argmax) count
    for p in model.parameters():
      p.add_(0.3 * torch.randn(p.shape, generator=g))
  return model.eval()


@pytest.fixture(scope='module')
def dirs(tmp_path_factory):
  """{kind: directory}: a transformers save_pretrained model with our tokenizer.json beside it
  (loaded by transformers as a PreTrainedTokenizerFast, the same file both sides read)."""
  tok, out = _tokenizer(), {}
  for kind in KINDS:
    d = str(tmp_path_factory.mktemp(kind))
    _hf_model(kind, tok).save_pretrained(d)
    tok.save(d)
    with open(os.path.join(d, 'tokenizer_config.json'), 'w', encoding='utf-8') as f:
      special = tokenizer_lib.EOS
      json.dump(
        {'tokenizer_class': 'PreTrainedTokenizerFast', 'bos_token': special, 'eos_token': special},
        f,
      )
    out[kind] = d
  return out


@functools.cache
def _hflm(d):
  return HFLM(pretrained=d, batch_size=4, device='cpu')


@functools.cache
def _ours(d, batch_size=4, mesh_shape=None):
  return harness.HarnessLM(d, batch_size=batch_size, mesh_shape=mesh_shape)


def _instances(kind, args):
  return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def _greedy_requests(hf):
  """Token-level requests whose continuations are (or, last token changed, are not) the greedy
  ones, so is-greedy is True for some."""
  model, out = hf.model, []
  for c in CONTEXTS[:3]:
    ctx = hf.tok_encode(c)[-40:]
    ids = list(ctx)
    with torch.no_grad():
      for _ in range(4):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    cont = ids[len(ctx) :]
    out += [(None, ctx, cont), (None, ctx, cont[:-1] + [(cont[-1] + 1) % 300])]
  return out


@pytest.mark.parametrize('kind', KINDS)
def test_loglikelihood_and_greedy_match_hf(dirs, kind):
  hf, ours = _hflm(dirs[kind]), _ours(dirs[kind])
  reqs = _instances('loglikelihood', REQUESTS)
  got, want = ours.loglikelihood(reqs), hf.loglikelihood(reqs)
  tokens = _greedy_requests(hf)
  got += ours._loglikelihood_tokens(tokens)
  want += hf._loglikelihood_tokens(tokens)
  np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want], rtol=0, atol=ATOL)
  assert [g[1] for g in got] == [w[1] for w in want]
  assert sum(w[1] for w in want) == len(tokens) // 2  # the greedy half


@pytest.mark.parametrize('kind', KINDS)
def test_rolling_and_generate_until_match_hf(dirs, kind):
  hf, ours = _hflm(dirs[kind]), _ours(dirs[kind])
  rolling = _instances('loglikelihood_rolling', [(t,) for t in TEXTS])
  np.testing.assert_allclose(
    ours.loglikelihood_rolling(rolling), hf.loglikelihood_rolling(rolling), rtol=1e-6, atol=ATOL
  )
  gen = _instances(
    'generate_until',
    [(c, {'until': ['\n\n', 'x'], 'max_gen_toks': 10}) for c in CONTEXTS]
    + [(c, {'until': ['.'], 'max_gen_toks': 6, 'do_sample': False}) for c in CONTEXTS[:2]],
  )
  assert ours.generate_until(gen) == hf.generate_until(gen)


def test_scores_do_not_depend_on_batch_size_or_mesh(dirs):
  """Batch sizes 1, 7, 32 and meshes (1,1,1), (8,1,1), (2,2,2) on the 8 simulated devices: the
  same log-likelihoods up to float32 rounding (XLA picks its kernels, and so its summation
  order, by shape; tensor parallelism splits sums) and the same is-greedy flags."""
  d = dirs['llama']
  reqs = _instances('loglikelihood', REQUESTS)
  rolling = _instances('loglikelihood_rolling', [(t,) for t in TEXTS])
  want = _ours(d, 1, '1,1,1')
  ll, roll = want.loglikelihood(reqs), want.loglikelihood_rolling(rolling)
  for bs, mesh in [(7, '1,1,1'), (32, '1,1,1'), (4, '8,1,1'), (7, '2,2,2')]:
    got = _ours(d, bs, mesh)
    assert got.mesh.devices.shape == tuple(int(s) for s in mesh.split(','))
    out = got.loglikelihood(reqs)
    np.testing.assert_allclose([o[0] for o in out], [w[0] for w in ll], rtol=1e-6)
    assert [o[1] for o in out] == [w[1] for w in ll]
    np.testing.assert_allclose(got.loglikelihood_rolling(rolling), roll, rtol=1e-6)


HARNESS = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'harness'
)
TASKS = ('pydoc_mc', 'pydoc_ppl', 'pydoc_gen')


def _scores(results):
  return {
    (task, metric): value
    for task, row in results['results'].items()
    for metric, value in row.items()
    if isinstance(value, float) and 'stderr' not in metric
  }


def test_shipped_tasks_score_as_hf_does(dirs, tmp_path):
  """configs/harness's multiple-choice, rolling-perplexity and generation tasks end to end through
  lm-eval: the same task scores from both backends."""
  d = dirs['gpt2']
  got, want = (
    _scores(
      harness.evaluate(d, TASKS, HARNESS, limit=6, output=str(tmp_path / f'{n}.json'), model=m)
    )
    for n, m in (('ours', _ours(d)), ('hf', _hflm(d)))
  )
  assert set(got) == set(want) and {t for t, _ in got} == set(TASKS)
  for key, value in want.items():
    np.testing.assert_allclose(got[key], value, rtol=1e-5, err_msg=str(key))
  assert json.load(open(tmp_path / 'ours.json', encoding='utf-8'))['results'].keys() == set(TASKS)


def test_eval_py_runs_the_shipped_tasks(dirs, tmp_path, run):
  out = tmp_path / 'results.json'
  proc = run(
    'eval.py',
    f'--checkpoint={dirs["gpt2"]}',
    '--harness_tasks=pydoc_mc,pydoc_gen',
    f'--harness_include={HARNESS}',
    '--harness_limit=3',
    '--harness_batch_size=2',
    f'--output={out}',
    env={'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1'},
  )
  assert 'pydoc_mc' in proc.stdout and 'acc' in proc.stdout, proc.stdout
  results = json.load(open(out, encoding='utf-8'))['results']
  assert 0 <= results['pydoc_mc']['acc,none'] <= 1 and 'exact_match,strip' in results['pydoc_gen']
