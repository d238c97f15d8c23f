"""Perplexity of a decoder on one long text, by HF's sliding-window recipe ("Perplexity of
fixed-length models", transformers docs): eval.py --text_file, and the rolling log-likelihood an
evaluation harness asks for."""

import functools
import os
from typing import Optional

import jax
import numpy as np

from lm import losses
from lm import pretrained
from lm import progress
from lm import sharding


def sliding_windows(num_tokens: int, window: int, stride: int) -> list:
  """(begin, end, trg_len) of each window of HF's strided perplexity loop: windows of at most
  `window` tokens start `stride` apart, and each scores only the `trg_len` tokens the previous
  one did not reach (the rest of it is context)."""
  if window < 2:
    raise ValueError(f'window={window}: a window needs at least 2 tokens to predict one.')
  if not 1 <= stride <= window:
    raise ValueError(f'stride={stride} must be in [1, window={window}]: lower --stride.')
  out, prev_end = [], 0
  for begin in range(0, num_tokens, stride):
    end = min(begin + window, num_tokens)
    out.append((begin, end, end - prev_end))
    prev_end = end
    if end == num_tokens:
      break
  return out


@functools.partial(jax.jit, static_argnames=('model', 'chunk'))
def _window_nll_sums(model, params, batch, chunk: int):
  """Per row, the summed NLL of its weighted targets (tied output projection, in chunks)."""
  hidden = model.apply({'params': params}, batch['input_ids'], method='hidden')
  emb = params['embed']['token']['embedding']
  one = lambda h, y, w: losses.chunked_cross_entropy_sums(h, emb, y, w, chunk)[0]
  return jax.vmap(one)(hidden, batch['targets'], batch['weights'])


def sliding_window_perplexity(
  model, params, ids, window: int, stride: int, batch_size: int = 8, mesh=None
) -> dict:
  """Perplexity of a decoder on one long token sequence, by HF's recipe ("Perplexity of
  fixed-length models", transformers docs), number for number:

    each window (`sliding_windows`) is a fresh input (positions from 0); its labels outside the
    last trg_len tokens are -100, so its loss is the mean NLL of the tokens it predicts among
    those (trg_len of them, or trg_len - 1 in the first window, whose first token has no
    context); the loss is weighted by trg_len - 1 (the doc's num_valid_tokens - batch_size),
    and perplexity = exp(sum of weighted losses / sum of weights).

  A window that predicts nothing (a last window of one token when stride == window) weighs 0;
  HF's loop would make that NaN. Windows run `batch_size` at a time, right-padded to `window`
  (causal attention: the padding never reaches a real token); the tied output projection is
  applied in chunks, so no [batch, window, vocab] logits are held.
  """
  ids = np.asarray(ids, np.int32)
  if len(ids) < 2:
    raise ValueError(f'the text has {len(ids)} token(s): perplexity needs at least 2.')
  mesh = mesh or sharding.make_mesh((-1, 1, 1))
  wins = sliding_windows(len(ids), window, stride)
  d = mesh.shape['data'] * mesh.shape['fsdp']
  batch_size = -(-batch_size // d) * d
  rows = -(-len(wins) // batch_size) * batch_size
  inputs = np.zeros((rows, window), np.int32)
  targets = np.zeros((rows, window), np.int32)
  weights = np.zeros((rows, window), np.float32)
  for r, (begin, end, trg_len) in enumerate(wins):
    n = end - begin
    inputs[r, :n] = ids[begin:end]
    targets[r, : n - 1] = ids[begin + 1 : end]  # position t predicts token t + 1
    weights[r, max(n - trg_len, 1) - 1 : n - 1] = 1.0

  params = sharding.placed(params, mesh)
  sums = []
  with sharding.use(mesh):
    for s in progress.track(range(0, rows, batch_size), 'perplexity'):
      batch = {
        'input_ids': inputs[s : s + batch_size],
        'targets': targets[s : s + batch_size],
        'weights': weights[s : s + batch_size],
      }
      out = _window_nll_sums(model, params, sharding.shard_batch(batch, mesh), min(window, 512))
      sums.append(np.asarray(jax.device_get(out)))
  sums = np.concatenate(sums)[: len(wins)].astype(np.float64)
  counts = weights[: len(wins)].sum(1).astype(np.float64)
  doc_weights = np.asarray([trg_len - 1 for _, _, trg_len in wins], np.float64)
  means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
  nll = float((means * doc_weights).sum() / doc_weights.sum())
  return {
    'perplexity': float(np.exp(nll)),
    'nll': nll,
    'tokens': int(len(ids)),
    'windows': len(wins),
    'window': int(window),
    'stride': int(stride),
  }


def evaluate_text(
  path: str,
  text_file: str,
  stride: Optional[int] = None,
  window: Optional[int] = None,
  batch_size: int = 8,
  mesh=None,
) -> dict:
  """Sliding-window perplexity (`sliding_window_perplexity`) of the decoder in `path` (train.py
  or DPO workdir, HF GPT-2 directory with its tokenizer files) on the whole of `text_file`,
  tokenized as one sequence. window: the model's max_len by default (HF's n_positions);
  stride: window // 2 by default (the doc's 512 of 1024)."""
  with open(text_file, encoding='utf-8') as f:  # before the model: a wrong path fails at once
    text = f.read()
  mesh = mesh or sharding.make_mesh((-1, 1, 1))
  pre = pretrained.load(path, mesh).body(path, '--text_file')
  if pre.kind != 'decoder':
    raise ValueError(
      f'{path} holds an {pre.kind}: sliding-window perplexity needs a decoder (GPT-2 style); '
      'an encoder gets eval.py without --text_file (MLM perplexity).'
    )
  if pre.tokenizer is None:
    raise ValueError(
      f'no tokenizer in {path}: put its tokenizer.json (or vocab.json + merges.txt) there.'
    )
  window = int(window or pre.cfg.max_len)
  if pre.cfg.position == 'learned' and window > pre.cfg.max_len:
    raise ValueError(
      f'window={window} exceeds the model max_len {pre.cfg.max_len}: lower --window.'
    )
  stride = int(stride or max(window // 2, 1))
  out = sliding_window_perplexity(
    pre.model, pre.params, pre.tokenizer.encode(text), window, stride, batch_size, mesh
  )
  return {'text_file': os.path.abspath(text_file), 'step': pre.step, **out}
