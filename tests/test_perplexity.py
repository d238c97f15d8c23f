"""Sliding-window perplexity of a decoder equals the number HF's "Perplexity of fixed-length
models" loop computes in PyTorch on the same weights and tokens, with and without overlap."""

import functools
import inspect
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from lm import perplexity  # noqa: E402
from lm.data import tokenizer as tokenizer_lib  # noqa: E402

WINDOW = 32


def _text():
  """Some prose: 211 tokens, 4 to 25 windows here (any text serves: the model is random)."""
  return inspect.getdoc(math.isclose)


@functools.cache
def _hf_dir(tmp_root):
  """A random tiny GPT-2 saved by transformers, with a byte-level BPE tokenizer beside it."""
  tok = tokenizer_lib.train_tokenizer([_text()], 'bpe', 400)
  torch.manual_seed(0)
  config = transformers.GPT2Config(
    vocab_size=tok.vocab_size,
    n_embd=32,
    n_layer=2,
    n_head=4,
    n_positions=WINDOW,
    initializer_range=0.2,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
    bos_token_id=tok.eos_id,
    eos_token_id=tok.eos_id,
  )
  model = transformers.GPT2LMHeadModel(config).eval()
  model.save_pretrained(tmp_root)
  tok.save(tmp_root)
  (tmp_root / 'text.txt').write_text(_text(), encoding='utf-8')
  return model, tok


def _hf_doc_loop(model, ids, max_length, stride):
  """The doc's loop, verbatim but for names."""
  encodings = torch.tensor([ids])
  seq_len = encodings.size(1)
  nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
  for begin_loc in range(0, seq_len, stride):
    end_loc = min(begin_loc + max_length, seq_len)
    trg_len = end_loc - prev_end_loc
    input_ids = encodings[:, begin_loc:end_loc]
    target_ids = input_ids.clone()
    target_ids[:, :-trg_len] = -100
    with torch.no_grad():
      neg_log_likelihood = model(input_ids, labels=target_ids).loss
    num_valid_tokens = (target_ids != -100).sum().item()
    num_loss_tokens = num_valid_tokens - target_ids.size(0)
    nll_sum += neg_log_likelihood * num_loss_tokens
    n_tokens += num_loss_tokens
    prev_end_loc = end_loc
    if end_loc == seq_len:
      break
  return float(torch.exp(nll_sum / n_tokens))


@pytest.fixture(scope='module')
def hf_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('ppl_gpt2')
  model, tok = _hf_dir(root)
  return root, model, tok


@pytest.mark.parametrize('stride,window', [(8, WINDOW), (WINDOW, WINDOW), (13, WINDOW - 7)])
def test_sliding_window_perplexity_matches_hf_doc_loop(hf_dir, stride, window):
  root, model, tok = hf_dir
  ids = tok.encode(_text())
  assert len(ids) > 4 * WINDOW
  ours = perplexity.evaluate_text(str(root), str(root / 'text.txt'), stride, window)
  ref = _hf_doc_loop(model, ids, window, stride)
  assert ours['tokens'] == len(ids)
  assert ours['windows'] == len(perplexity.sliding_windows(len(ids), window, stride))
  np.testing.assert_allclose(ours['perplexity'], ref, rtol=1e-4)
  if stride < window:  # overlap gives each scored token more context: a different number
    disjoint = _hf_doc_loop(model, ids, window, window)
    assert abs(ref - disjoint) > 1e-3 * ref


def test_sliding_windows_cover_every_token_once():
  wins = perplexity.sliding_windows(100, 32, 12)
  assert wins[0] == (0, 32, 32) and wins[-1][1] == 100
  assert sum(t for _, _, t in wins) == 100  # each token is scored in exactly one window
  assert all(e - b <= 32 for b, e, _ in wins)
  with pytest.raises(ValueError, match='stride=40'):
    perplexity.sliding_windows(100, 32, 40)


@pytest.mark.slow
def test_eval_py_text_file(hf_dir, tmp_path, run):
  root, model, tok = hf_dir
  out = tmp_path / 'ppl.json'
  run(
    'eval.py',
    f'--checkpoint={root}',
    f'--text_file={root / "text.txt"}',
    '--stride=8',
    f'--output={out}',
  )
  got = json.loads(out.read_text())
  assert (got['window'], got['stride']) == (WINDOW, 8)  # window: the model's n_positions
  ref = _hf_doc_loop(model, tok.encode(_text()), WINDOW, 8)
  np.testing.assert_allclose(got['perplexity'], ref, rtol=1e-4)
