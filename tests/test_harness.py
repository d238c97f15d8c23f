"""lm.harness against lm-eval's own `hf` backend (HFLM) on random tiny GPT-2 and Llama
directories saved by transformers: the same per-request log-likelihoods (within 1e-4) and is-greedy
flags, rolling log-likelihoods, greedy generations and task scores; and our scores the same at
every batch size and mesh. Offline: the models, tokenizer and task data are local files."""

import functools
import json
import os

import numpy as np
import pytest
import tokenizers

os.environ['HF_HUB_OFFLINE'] = '1'
os.environ['HF_DATASETS_OFFLINE'] = '1'
import torch  # noqa: E402  (the `hf` extra; `.[test]` installs lm-eval and accelerate)
import transformers  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from conftest import run_processes  # noqa: E402
from lm import harness  # noqa: E402
from lm.data import tokenizer as tokenizer_lib  # noqa: E402

KINDS = ('gpt2', 'llama', 't5')  # T5 through the encoder-decoder path (HFLM's seq2seq)
SLOW = pytest.mark.slow
# the fast tier: GPT-2's log-likelihoods (one model built); the rest is marked slow
FAST_FIRST = [k if k == 'gpt2' else pytest.param(k, marks=SLOW) for k in KINDS]
MAX_LENGTH = 64  # the decoders' positions; T5 (relative positions) has none: both sides are told
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


# kind: (HF model class, config class, sizes): random tiny models, 64 positions (T5: relative)
ARCH = {
  'gpt2': ('GPT2LMHeadModel', 'GPT2Config', dict(n_embd=32, n_layer=2, n_head=4, n_positions=64)),
  'llama': ('LlamaForCausalLM', 'LlamaConfig', dict(
    hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64)),
  't5': ('T5ForConditionalGeneration', 'T5Config', dict(  # v1.1
    d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, feed_forward_proj='gated-gelu',
    tie_word_embeddings=False, relative_attention_num_buckets=8,
    relative_attention_max_distance=20, dropout_rate=0.0, decoder_start_token_id=0)),
}  # fmt: skip


def _hf_model(kind, tok):
  model_cls, config_cls, sizes = ARCH[kind]
  if kind == 't5':  # the start id 0 is our EOS (T5's own pad); EOS ends generations
    specials = dict(eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
  else:
    specials = dict(bos_token_id=tok.eos_id, eos_token_id=tok.eos_id)
  torch.manual_seed(0)
  config = getattr(transformers, config_cls)(vocab_size=tok.vocab_size, **sizes, **specials)
  model = getattr(transformers, model_cls)(config).eval()
  with torch.no_grad():
    if kind == 't5':  # HF's init at full strength but logits of ~unit scale: float32 sums of
      model.lm_head.weight.mul_(0.15)  # large log-probs would differ by more than 1e-4
      return model
    g = torch.Generator().manual_seed(0)
    for p in model.parameters():  # HF's init is near-flat: noise makes every tensor count
      p.add_(0.3 * torch.randn(p.shape, generator=g))
  return model


@pytest.fixture(scope='module')
def dirs(tmp_path_factory):
  """dirs(kind): a transformers save_pretrained model with our tokenizer.json beside it (loaded
  by transformers as a PreTrainedTokenizerFast, the same file both sides read), built once, when
  a test first asks (the fast tier builds one)."""
  tok = _tokenizer()

  @functools.cache
  def build(kind):
    d = str(tmp_path_factory.mktemp(kind))
    _hf_model(kind, tok).save_pretrained(d)
    if kind == 't5':  # T5's tokenizer ends every encoded text with EOS (its post-processor)
      hf_tok = tokenizers.Tokenizer.from_str(tok.hf.to_str())
      hf_tok.post_processor = tokenizers.processors.TemplateProcessing(
        single=f'$A {tokenizer_lib.EOS}', special_tokens=[(tokenizer_lib.EOS, tok.eos_id)]
      )
      hf_tok.save(os.path.join(d, 'tokenizer.json'))
    else:
      tok.save(d)
    with open(os.path.join(d, 'tokenizer_config.json'), 'w', encoding='utf-8') as f:
      special = tokenizer_lib.EOS
      json.dump(
        {'tokenizer_class': 'PreTrainedTokenizerFast', 'bos_token': special, 'eos_token': special},
        f,
      )
    return d

  return build


@functools.cache
def _hflm(d):
  return HFLM(pretrained=d, batch_size=4, device='cpu', max_length=MAX_LENGTH)


@functools.cache
def _ours(d, batch_size=4, mesh_shape=None):
  return harness.HarnessLM(d, batch_size=batch_size, mesh_shape=mesh_shape, max_length=MAX_LENGTH)


def _instances(kind, args):
  return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def _greedy_requests(hf):
  """Token-level requests whose continuations are (or, last token changed, are not) the greedy
  ones, so is-greedy is True for some."""
  model, out = hf.model, []
  for c in CONTEXTS[:3]:
    ctx, cont = hf.tok_encode(c)[-40:], []
    with torch.no_grad():
      for _ in range(4):
        if hf.backend == 'seq2seq':  # the decoder after T5's start id 0
          logits = model(torch.tensor([ctx]), decoder_input_ids=torch.tensor([[0, *cont]])).logits
        else:
          logits = model(torch.tensor([ctx + cont])).logits
        cont.append(int(logits[0, -1].argmax()))
    out += [(None, ctx, cont), (None, ctx, cont[:-1] + [(cont[-1] + 1) % 300])]
  return out


def _hf_generate_until(hf, requests):
  """HFLM's generations. Its seq2seq generate gives the decoder max_length = context + max_gen_toks
  (the start id included) tokens: one request at a time, told max_gen_toks - context + 1, it
  makes the max_gen_toks new tokens ours (and its causal backend) make."""
  if hf.backend == 'causal':
    return hf.generate_until(requests)
  out = []
  for r in requests:
    ctx, kwargs = r.args
    n = kwargs['max_gen_toks'] - len(hf.tok_encode(ctx)) + 1
    assert n >= 1, ctx
    out += hf.generate_until(_instances('generate_until', [(ctx, {**kwargs, 'max_gen_toks': n})]))
  return out


@pytest.mark.parametrize('kind', FAST_FIRST)
def test_loglikelihood_and_greedy_match_hf(dirs, kind):
  hf, ours = _hflm(dirs(kind)), _ours(dirs(kind))
  assert ours.backend == hf.backend == ('seq2seq' if kind == 't5' else 'causal')
  reqs = _instances('loglikelihood', REQUESTS)
  got, want = ours.loglikelihood(reqs), hf.loglikelihood(reqs)
  tokens = _greedy_requests(hf)
  got += ours._loglikelihood_tokens(tokens)
  want += hf._loglikelihood_tokens(tokens)
  np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want], rtol=0, atol=ATOL)
  assert [g[1] for g in got] == [w[1] for w in want]
  assert sum(w[1] for w in want) == len(tokens) // 2  # the greedy half


@SLOW
@pytest.mark.parametrize('kind', KINDS)
def test_rolling_and_generate_until_match_hf(dirs, kind):
  hf, ours = _hflm(dirs(kind)), _ours(dirs(kind))
  rolling = _instances('loglikelihood_rolling', [(t,) for t in TEXTS])
  np.testing.assert_allclose(
    ours.loglikelihood_rolling(rolling), hf.loglikelihood_rolling(rolling), rtol=1e-6, atol=ATOL
  )
  contexts = CONTEXTS if kind != 't5' else [c for c in CONTEXTS if len(c) < 20]  # see above
  gen = _instances(
    'generate_until',
    [(c, {'until': ['\n\n', 'x'], 'max_gen_toks': 16}) for c in contexts]
    # another group (other stop strings), the same compiled shapes as the first's short batch
    + [(c, {'until': ['.'], 'max_gen_toks': 16, 'do_sample': False}) for c in CONTEXTS[:2]],
  )
  got = ours.generate_until(gen)
  assert got == _hf_generate_until(hf, gen)
  assert sum(len(g) >= 3 for g in got) >= 3, got  # not stopped at once


HARNESS = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'harness'
)
TASKS = ('pydoc_mc', 'pydoc_ppl', 'pydoc_gen')
LIMIT = 2  # documents per task


def _scores(results):
  return {
    (task, metric): value
    for task, row in results['results'].items()
    for metric, value in row.items()
    if isinstance(value, float) and 'stderr' not in metric
  }


def _evaluate(d, model, tmp_path, limit):
  """lm-eval's results of the shipped tasks' first `limit` documents."""
  out = str(tmp_path / 'results.json')
  return harness.evaluate(d, TASKS, HARNESS, limit=limit, output=out, model=model)


@SLOW
def test_shipped_tasks_score_as_hf_does_at_every_batch_size_and_mesh(dirs, tmp_path):
  """configs/harness's multiple-choice, rolling-perplexity and generation tasks through lm-eval:
  HF's task scores; at batch sizes 1, 7, 32 and meshes (1,1,1), (8,1,1), (2,2,2) on the 8
  simulated devices, the same printed table (lm-eval's, every digit, even a random model's
  word perplexity of ~1e12 to 4 decimals) and bit-identical log-likelihoods and flags."""
  d = dirs('llama')
  want = _scores(_evaluate(d, _hflm(d), tmp_path, LIMIT))
  assert {t for t, _ in want} == set(TASKS)
  reqs = _instances('loglikelihood', REQUESTS)
  rolling = _instances('loglikelihood_rolling', [(t,) for t in TEXTS])
  first = None
  for bs, mesh in [(1, '1,1,1'), (7, '2,2,2'), (32, '8,1,1')]:  # each size, each mesh
    ours = _ours(d, bs, mesh)
    assert dict(ours.mesh.shape) == dict(
      zip(('data', 'fsdp', 'tensor'), map(int, mesh.split(','))), context=1
    )
    results = _evaluate(d, ours, tmp_path, LIMIT)
    seen = (
      harness.format_table(results),
      ours.loglikelihood(reqs),
      ours.loglikelihood_rolling(rolling),
    )
    if first is None:
      first = seen
      got = _scores(results)
      assert set(got) == set(want), (got, want)
      for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, err_msg=str(key))
      assert len(_printed(seen[0])) == 6, seen[0]
    assert seen == first, (bs, mesh)


def _printed(table):
  """{(task, metric): (value, stderr)} as lm-eval's table prints them."""
  out, task = {}, None
  for line in table.splitlines()[2:]:
    cells = [c.strip() for c in line.split('|')[1:-1]]
    if len(cells) == 9:
      task = cells[0] or task
      out[task, cells[4]] = (cells[6], cells[8])
  return out


def _printed_table(stdout):
  return '\n'.join(l for l in stdout.splitlines() if l.startswith('|'))


@SLOW
def test_eval_py_two_processes_score_as_one(dirs, tmp_path):
  """eval.py end to end (results JSON, printed table) on the shipped tasks in 2 jax.distributed
  processes of 4 devices (one 8-way data-parallel mesh, each process putting its own rows of
  every batch): the table and results of one process on 8 devices (this one)."""
  d = dirs('gpt2')
  one = _evaluate(d, _ours(d, 3, '8,1,1'), tmp_path, 3)
  two = run_processes(
    'eval.py',
    f'--checkpoint={d}',
    f'--harness_tasks={",".join(TASKS)}',
    f'--harness_include={HARNESS}',
    '--harness_limit=3',
    '--harness_batch_size=3',
    f'--output={tmp_path / "two.json"}',
    log_dir=tmp_path,
    devices=4,
    env={'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1'},
  )
  table = harness.format_table(one)
  assert 'pydoc_mc' in table and 'bits_per_byte' in table and 'exact_match' in table, table
  assert _printed_table(two[0]) == _printed_table(table) and not _printed_table(two[1])
  got = json.load(open(tmp_path / 'two.json', encoding='utf-8'))
  assert _scores(got) == _scores(one) and set(got['results']) == set(TASKS)
