"""T5 span corruption (Raffel et al. 2020, section 3.1.4): the encoder sees the text with each
noise span replaced by one sentinel, the decoder predicts each sentinel followed by its span.

`random_spans_noise_mask` and `input_and_target_lengths` are T5's
(`t5.data.preprocessors.random_spans_noise_mask`, as HF's `run_t5_mlm_flax.py` ports them): the
number of noise tokens is round(length * noise_density), the number of spans
round(noise tokens / mean_noise_span_length), and both the noise and the non-noise tokens are cut
into that many non-empty spans uniformly at random, interleaved starting with non-noise.
"""

import numpy as np

from lm.data.pretrain import Batcher


def _counts(length: int, noise_density: float, mean_noise_span_length: float):
  """(noise tokens, noise spans) of a row of `length` tokens, at least one of each kind."""
  num_noise = min(max(int(np.round(length * noise_density)), 1), length - 1)
  num_spans = int(np.round(min(num_noise, length - num_noise) / mean_noise_span_length))
  return num_noise, max(num_spans, 1)


def input_and_target_lengths(
  tokens_length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
  """(encoder input length, target length) of a row of `tokens_length` raw tokens: the
  non-noise tokens plus one sentinel per span plus EOS, and the noise tokens plus one sentinel
  per span plus EOS."""
  num_noise, num_spans = _counts(tokens_length, noise_density, mean_noise_span_length)
  return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1


def raw_length(inputs_length: int, noise_density: float, mean_noise_span_length: float):
  """(raw tokens per row, target length): the longest raw row whose encoder input fits in
  `inputs_length` (T5's compute_input_and_target_lengths)."""
  n = inputs_length
  while input_and_target_lengths(n + 1, noise_density, mean_noise_span_length)[0] <= inputs_length:
    n += 1
  return n, input_and_target_lengths(n, noise_density, mean_noise_span_length)[1]


def _segment(rng: np.random.Generator, num_items: int, num_segments: int) -> np.ndarray:
  """Lengths of `num_segments` non-empty segments of `num_items`, uniformly at random."""
  first = np.arange(num_items - 1) < num_segments - 1
  rng.shuffle(first)
  return np.bincount(np.cumsum(np.concatenate([[0], first])), minlength=num_segments)


def random_spans_noise_mask(
  length: int, noise_density: float, mean_noise_span_length: float, rng: np.random.Generator
) -> np.ndarray:
  """Boolean [length]: True on noise tokens; the row starts with non-noise."""
  num_noise, num_spans = _counts(length, noise_density, mean_noise_span_length)
  noise = _segment(rng, num_noise, num_spans)
  keep = _segment(rng, length - num_noise, num_spans)
  spans = np.stack([keep, noise], 1).reshape(-1)
  return np.repeat(np.arange(2 * num_spans) % 2 == 1, spans)


def corrupt(tokens: np.ndarray, noise: np.ndarray, first_sentinel: int, eos_id: int):
  """(inputs, targets): span k's tokens become sentinel first_sentinel + k in the inputs (ours
  count up from the tokenizer's vocabulary; T5's sentencepiece <extra_id_k> count down from its
  top); the targets are each sentinel followed by its span; both end in EOS."""
  starts = noise & ~np.concatenate([[False], noise[:-1]])
  sentinel = first_sentinel - 1 + np.cumsum(starts)
  inputs = np.where(starts, sentinel, tokens)[~noise | starts]
  targets = np.stack([np.where(starts, sentinel, -1), tokens], 1)[noise].reshape(-1)
  end = lambda x: np.concatenate([x, [eos_id]]).astype(np.int32)
  return end(inputs), end(targets[targets >= 0])


class SpanBatcher(Batcher):
  """Packed span-corruption rows: a random window of `raw` tokens of ``doc0 eos doc1 eos ...``
  (T5 concatenates documents the same way), corrupted into exactly `inputs_length` encoder
  tokens and `targets_length` target tokens; the decoder reads the targets shifted right behind
  the start token 0 (T5's pad)."""

  def __init__(self, corpus, tokenizer, inputs_length: int, batch_size: int, seed: int,
               noise_density: float, mean_noise_span_length: float, first_sentinel: int):  # fmt: skip
    super().__init__(batch_size, seed)
    eos = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.sep_id
    if eos is None:
      raise ValueError("Span corruption needs an end-of-document token: use tokenizer.kind='bpe'.")
    self.raw, self.targets_length = raw_length(inputs_length, noise_density, mean_noise_span_length)
    if corpus.num_windows(self.raw - 1) < 1:
      raise ValueError(
        f'Corpus of {corpus.num_tokens} tokens is too small for one span-corruption row of '
        f'{self.raw} tokens: use more text or a smaller seq_len.'
      )
    self.corpus, self.eos, self.first_sentinel = corpus, eos, int(first_sentinel)
    self.density, self.mean_span = float(noise_density), float(mean_noise_span_length)
    self.num_windows = corpus.num_windows(self.raw - 1)

  def _row(self, rng):
    window, is_eos = self.corpus.window(int(rng.integers(self.num_windows)), self.raw)
    window[is_eos] = self.eos
    noise = random_spans_noise_mask(self.raw, self.density, self.mean_span, rng)
    inputs, targets = corrupt(window, noise, self.first_sentinel, self.eos)
    return {
      'input_ids': inputs,
      'decoder_input_ids': np.concatenate([[0], targets[:-1]]).astype(np.int32),
      'targets': targets,
    }
