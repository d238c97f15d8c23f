"""Autoregressive generation for `lm.model.Decoder` and the encoder-decoder `lm.t5.T5`: greedy,
sampling and beam search.

The whole decode (prefill, then a `lax.while_loop` of one-token steps) is one jitted
function over a fixed-size KV cache, so every step costs the same whatever its position
and the host only sees the final tokens.

Semantics follow Hugging Face `generate` so outputs can be compared token for token:
  * Prompts of different lengths are LEFT-padded (the cache index is shared by all rows);
    positions count real tokens only.
  * `max_length` counts the prompt as HF does: in a left-padded batch the longest prompt
    leaves max_length - longest new tokens to every row.
  * Before any warper, HF's constraint processors in `_get_logits_processor`'s order
    (transformers 5.x): repetition penalty, no-repeat n-gram, min new tokens. They see the row's
    history (prompt + tokens so far) held in a fixed-size [rows, P + N] array inside the loop,
    so they cost no host round trip; greedy and sampling apply them to the logits, beam search
    to the log-probs (as HF does). Left padding is never history: the repetition penalty skips
    it as HF does (`prompt_ignore_length`), and no n-gram spans it, where HF's
    NoRepeatNGramLogitsProcessor counts pad tokens as text; the two agree whenever the pad id
    does not occur in the text itself, and ours gives a prompt the same tokens whatever batch
    it is padded in.
  * Sampling then applies temperature, then top-k, then top-p (HF's warper order).
  * Beam search is HF's vectorised beam search (transformers >= 4.50): 2*num_beams
    candidates per step, finished score = sum_logprobs / generated_len ** length_penalty,
    `early_stopping` in {False (HF default), True, 'never'}.
  * Encoder-decoders (a model with `encoder_decoder = True`): the prompt is the encoder's input
    (right or left padded alike: the encoder sees its mask), encoded once in the prefill, which
    also caches the cross-attention keys/values; the decoder starts from `pad_id` (HF's
    decoder_start_token_id for T5) and the processors see the decoder's tokens as history.
  * Continuations stop at EOS, which is INCLUDED in the returned tokens (as in HF);
    finished rows are padded with `pad_id` inside the jitted loop and trimmed on return.
"""

import dataclasses
import functools
from typing import Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lm import sharding

NEG = -1.0e9  # HF's "impossible" score: finite, so sums and comparisons stay well defined.


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything that changes the compiled program (hashable: a static jit argument)."""

  max_new_tokens: int
  strategy: str = 'greedy'  # 'greedy' | 'sample' | 'beam'
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  num_beams: int = 1
  length_penalty: float = 1.0
  early_stopping: Union[bool, str] = False
  eos_id: int = -1  # -1: never stop early
  pad_id: int = 0
  repetition_penalty: float = 1.0  # > 1 discourages tokens already in prompt or output
  no_repeat_ngram_size: int = 0  # > 0: no n-gram of this size occurs twice
  min_new_tokens: int = 0  # EOS is impossible before this many new tokens


# ----------------------------------------------------------------------------- model plumbing


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, min_len: int = 0):
  """[B, P] ids and mask, prompts right-aligned so every row's next token lands in one slot;
  P is the longest prompt, at least `min_len` (one compiled shape for many batches)."""
  p = max(max(len(x) for x in prompts), min_len)
  if p == 0:
    raise ValueError('generate needs non-empty prompts (there is no BOS to start from).')
  ids = np.full((len(prompts), p), pad_id, np.int32)
  mask = np.zeros((len(prompts), p), np.int32)
  for i, x in enumerate(prompts):
    if len(x):
      ids[i, p - len(x) :], mask[i, p - len(x) :] = x, 1
  return ids, mask


def is_encoder_decoder(model) -> bool:
  return getattr(model, 'encoder_decoder', False)


def _cache_shapes(model, batch: int, length: int, source_len: int = 1):
  ids = jnp.zeros((batch, length), jnp.int32)
  args = (jnp.zeros((batch, source_len), jnp.int32), ids) if is_encoder_decoder(model) else (ids,)
  return jax.eval_shape(
    lambda: nn.unbox(model.init(jax.random.PRNGKey(0), *args, decode=True))['cache']
  )


def init_cache(model, batch: int, length: int, source_len: int = 1):
  """Zeroed cache for `batch` rows and `length` slots (and an encoder-decoder's `source_len`
  encoder positions), without running (or allocating) init."""
  shapes = _cache_shapes(model, batch, length, source_len)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


@functools.lru_cache(maxsize=None)
def cache_batch_axes(model):
  """Per cache leaf, the axis that indexes rows (None for row-less leaves like cache_index).

  Found by comparing the cache shapes at two batch sizes rather than assuming a layout, so
  it holds with or without `scan_layers` (which prepends a layer axis) and for any leaf.
  """

  def axis(a, b):
    diff = [i for i, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y]
    return diff[0] if diff else None

  return jax.tree.map(axis, _cache_shapes(model, 1, 1), _cache_shapes(model, 2, 1))


def reorder_cache(model, cache, rows):
  """Gathers cache rows (beam search's parent beams); `rows` indexes the flat batch."""
  return jax.tree.map(
    lambda x, ax: x if ax is None else jnp.take(x, rows, axis=ax), cache, cache_batch_axes(model)
  )


def _last_logits(module, ids, **kwargs):
  # The vocab projection only for the last position: a prefill never needs the others.
  return module.logits(module.hidden(ids, **kwargs)[:, -1])


def _last_logits_seq2seq(module, ids, source=None, source_mask=None, encoded=None):
  """Decoder step(s) `ids`; the prefill passes the `source` ids to encode (and cache)."""
  if source is not None:
    encoded = module.encode(source, source_mask)
  return module.logits(module.hidden(ids, encoded, source_mask, decode=True)[:, -1])


def forward(model, params, cache, ids, positions, mask):
  """Appends `ids` [B, T] at the cache index; returns (float32 logits of the last position, cache).

  mask: padding over the cache slots, or an encoder-decoder's source mask (positions unused: the
  decoder counts its own)."""
  if is_encoder_decoder(model):
    kwargs = dict(source_mask=mask, method=_last_logits_seq2seq)
  else:
    kwargs = dict(positions=positions, attention_mask=mask, decode=True, method=_last_logits)
  logits, mut = model.apply({'params': params, 'cache': cache}, ids, mutable=['cache'], **kwargs)
  return logits.astype(jnp.float32), mut['cache']


def decoder_prompt(model, ids, mask, pad_id: int):
  """The decoder's own prompt and mask: the ids themselves, or for an encoder-decoder the start
  token (`pad_id`)."""
  if not is_encoder_decoder(model):
    return ids, mask
  start = jnp.full((ids.shape[0], 1), pad_id, ids.dtype)
  return start, jnp.ones_like(start)


def prefill(model, params, ids, mask, max_new_tokens: int, pad_id: int = 0):
  """Runs the prompt through a fresh cache sized for P + max_new_tokens slots (an encoder-decoder:
  encodes the prompt, then runs the start token through max_new_tokens decoder slots).

  Returns (last logits [B, V], cache, slot mask [B, P + N] or the source mask, next position [B]).
  """
  b, p = ids.shape
  if is_encoder_decoder(model):
    start, _ = decoder_prompt(model, ids, mask, pad_id)
    logits, mut = model.apply(
      {'params': params, 'cache': init_cache(model, b, max_new_tokens, p)},
      start,
      source=ids,
      source_mask=mask,
      mutable=['cache'],
      method=_last_logits_seq2seq,
    )
    return logits.astype(jnp.float32), mut['cache'], mask, jnp.ones((b,), jnp.int32)
  full_mask = jnp.concatenate([mask, jnp.ones((b, max_new_tokens), mask.dtype)], axis=1)
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  logits, cache = forward(
    model, params, init_cache(model, b, p + max_new_tokens), ids, positions, full_mask
  )
  return logits, cache, full_mask, mask.sum(axis=1)


def step(model, params, cache, tokens, positions, full_mask):
  """One decode step: `tokens`, `positions` are [B]."""
  return forward(model, params, cache, tokens[:, None], positions[:, None], full_mask)


# ----------------------------------------------------------------------------- token choice


def process_logits(logits, s: Settings):
  """HF's sampling processors in HF's order: temperature, top-k, top-p (min 1 token kept)."""
  logits = logits / s.temperature
  if 0 < s.top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, s.top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if s.top_p < 1.0:
    logits = jnp.where(top_p_drop(logits, s.top_p), -jnp.inf, logits)
  return logits


def top_p_drop(logits, top_p):
  """[B, V] True for the tokens nucleus sampling drops: those after the smallest head of the
  sorted distribution whose mass reaches `top_p` (a scalar, or [B, 1] per row; the top token is
  always kept)."""
  order = jnp.argsort(-logits, axis=-1)
  probs = jax.nn.softmax(jnp.take_along_axis(logits, order, -1), axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  drop_sorted = (mass_before >= top_p).at[..., 0].set(False)
  return (
    jnp.zeros_like(drop_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
  )


def _scatter_any(mask, tokens, v: int):
  """[R, V] True at every vocabulary id that `tokens` [R, T] holds where `mask` is set."""
  rows = jnp.arange(tokens.shape[0])[:, None]
  idx = jnp.where(mask & (tokens >= 0) & (tokens < v), tokens, v)
  return jnp.zeros((tokens.shape[0], v + 1), bool).at[rows, idx].set(True)[:, :v]


def banned_ngrams(hist, real, length, n: int, v: int):
  """[R, V] True for the tokens that would complete an n-gram already in a row's history.

  hist [R, T]: the rows' tokens in their slots, real [R, T]: which slots hold text (not left
  padding, not yet generated), `length`: slots filled so far (a traced scalar). The last n-1
  tokens are compared with every earlier window of n-1 real tokens at once (fixed shapes, no
  dictionary of n-grams); a matching window bans the token that followed it.
  """
  r, t = hist.shape
  w = t - n + 1  # window starts
  if w <= 0:
    return jnp.zeros((r, v), bool)
  start = jnp.arange(w)
  match = real[:, :w] & (start + n - 1 < length)  # the whole window is real text
  if n > 1:
    prefix = jax.lax.dynamic_slice_in_dim(hist, jnp.maximum(length - (n - 1), 0), n - 1, axis=1)
    for k in range(n - 1):
      match &= hist[:, k : k + w] == prefix[:, k : k + 1]
  return _scatter_any(match, hist[:, n - 1 : n - 1 + w], v)


def constrain(logits, hist, real, new: int, s: Settings):
  """HF's constraint processors, in `_get_logits_processor`'s order: repetition penalty
  (RepetitionPenaltyLogitsProcessor), no-repeat n-gram (NoRepeatNGramLogitsProcessor), min new
  tokens (MinNewTokensLengthLogitsProcessor). logits [R, V]; hist, real [R, P + N] as in
  `banned_ngrams`; `new`: tokens generated so far (so P + new slots are filled)."""
  v = logits.shape[-1]
  length = hist.shape[1] - s.max_new_tokens + new
  if s.repetition_penalty != 1.0:
    seen = _scatter_any(real & (jnp.arange(hist.shape[1]) < length), hist, v)
    p = s.repetition_penalty
    logits = jnp.where(seen, jnp.where(logits < 0, logits * p, logits / p), logits)
  if s.no_repeat_ngram_size > 0:
    banned = banned_ngrams(hist, real, length, s.no_repeat_ngram_size, v)
    logits = jnp.where(banned, -jnp.inf, logits)
  if s.min_new_tokens > 0 and 0 <= s.eos_id < v:
    logits = logits.at[:, s.eos_id].set(
      jnp.where(new < s.min_new_tokens, -jnp.inf, logits[:, s.eos_id])
    )
  return logits


def _history(ids, mask, s: Settings):
  """(hist [B, P + N] with the prompt in place and pads for the tokens to come, real: which
  slots are text once filled)."""
  b = ids.shape[0]
  hist = jnp.concatenate([ids, jnp.full((b, s.max_new_tokens), s.pad_id, ids.dtype)], 1)
  real = jnp.concatenate([mask.astype(bool), jnp.ones((b, s.max_new_tokens), bool)], 1)
  return hist, real


def draw_rows(keys, logits):
  """[B] tokens, row b drawn from logits[b] with its own key keys[b] ([B, 2]): a row's draw is
  then the same whatever batch it is in (what `lm.serving.engine` draws per slot)."""
  draw = lambda key, row: jax.random.categorical(key, row[None], axis=-1)[0]
  return jax.vmap(draw)(keys, logits).astype(jnp.int32)


def fold(rng, i):
  """fold_in(rng, i) for one key, or for each row's key of [B, 2] keys."""
  return (
    jax.vmap(jax.random.fold_in, (0, None))(rng, i) if rng.ndim == 2 else jax.random.fold_in(rng, i)
  )


def choose(logits, rng, s: Settings):
  """Argmax, or a draw after `process_logits`: one key for the batch, or [B, 2] keys, one a row."""
  if s.strategy == 'greedy':
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if rng.ndim == 2:
    return draw_rows(rng, process_logits(logits, s))
  return jax.random.categorical(rng, process_logits(logits, s), axis=-1).astype(jnp.int32)


# ----------------------------------------------------------------------------- decode loops


def _loop(cond, body, state, params, carry_params: bool):
  """`lax.while_loop(cond, body, state)` whose `body(state, params)` gets the params.

  Closed over, the params are loop constants, and XLA hoists what the body computes from them
  alone out of the loop: bf16 params under a float32 compute dtype become a float32 copy of the
  whole model (2x the params on top of them; XLA's CPU dots never take bf16 operands). With
  `carry_params` they ride in the loop state behind an optimization barrier, so nothing derived
  from them is loop-invariant: each step widens each weight just before its use (the numerics are
  the same, widening is exact)."""
  if not carry_params:
    return jax.lax.while_loop(cond, lambda st: body(st, params), state)

  def carried(st):
    p = jax.lax.optimization_barrier(st[1])
    return body(st[0], p), p

  return jax.lax.while_loop(lambda st: cond(st[0]), carried, (state, params))[0]


def _widens(model, params) -> bool:
  """Whether the compute dtype is wider than some parameter (bf16 params, float32 compute)."""
  width = jnp.dtype(model.cfg.dtype).itemsize
  return any(
    jnp.issubdtype(x.dtype, jnp.floating) and jnp.dtype(x.dtype).itemsize < width
    for x in jax.tree.leaves(params)
  )


def _on_cpu(params) -> bool:
  arrays = [x for x in jax.tree.leaves(params) if isinstance(x, jax.Array)]
  if not arrays:  # numpy params go to the default device
    return jax.default_backend() == 'cpu'
  return all(d.platform == 'cpu' for x in arrays for d in x.devices())


# XLA:CPU's default scheduler runs independent work early for concurrency: every layer's weight
# widening at once. The memory-optimized one widens each just before its use (measured on the
# Qwen2-0.5B shape in bf16: 2.0 GB of temporaries -> 18 MB, and faster).
_LEAN_CPU = {'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'}
_STATIC = ('model', 's', 'carry_params')


@functools.cache
def _lean(fn, cpu: bool):
  """`fn` jitted for params the compute dtype widens: carried through the loop, and on CPU
  compiled with the memory-optimized scheduler."""
  return jax.jit(
    functools.partial(fn, carry_params=True),
    static_argnames=_STATIC[:2],
    compiler_options=_LEAN_CPU if cpu else None,
  )


@functools.partial(jax.jit, static_argnames=_STATIC)
def decode(model, params, ids, mask, rng, s: Settings, carry_params: bool = False):
  """Greedy / sampled continuations [B, N]; rows past their EOS hold `pad_id`.

  rng: one key for the batch, or raw keys [B, 2], one a row: row b's step i then draws with
  fold_in(rng[b], i), as `lm.serving.engine` does for a request seeded with rng[b].

  The loop exits as soon as every row has hit EOS. `carry_params`: see `_loop` (`generate` sets
  it for params narrower than the compute dtype).
  """
  n = s.max_new_tokens
  logits, cache, full_mask, pos = prefill(model, params, ids, mask, n, s.pad_id)
  ids, mask = decoder_prompt(model, ids, mask, s.pad_id)
  p = ids.shape[1]
  hist, real = _history(ids, mask, s)
  pick = lambda logits, hist, i: choose(constrain(logits, hist, real, i, s), fold(rng, i), s)
  tok = pick(logits, hist, 0)
  state = (jnp.int32(1), cache, tok, hist.at[:, p].set(tok), tok == s.eos_id)

  def cond(state):
    i, _, _, _, done = state
    return (i < n) & ~jnp.all(done)

  def body(state, params):
    i, cache, tok, hist, done = state
    logits, cache = step(model, params, cache, tok, pos + i - 1, full_mask)
    tok = jnp.where(done, s.pad_id, pick(logits, hist, i))
    return i + 1, cache, tok, hist.at[:, p + i].set(tok), done | (tok == s.eos_id)

  return _loop(cond, body, state, params, carry_params)[3][:, p:]


def _gather(x, idx):
  """x [B, K, ...] indexed along the beam axis by idx [B, K']."""
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


@functools.partial(jax.jit, static_argnames=_STATIC)
def beam_search(model, params, ids, mask, s: Settings, carry_params: bool = False):
  """HF beam search. Returns (sequences [B, K, N], scores [B, K]), best first.

  Mirrors `GenerationMixin._beam_search` step for step (including its early-stop
  heuristic and the finished-only final pool), so tie-free inputs give HF's tokens.
  """
  b, k, n = ids.shape[0], s.num_beams, s.max_new_tokens
  logits, cache, full_mask, pos = prefill(model, params, ids, mask, n, s.pad_id)
  ids, mask = decoder_prompt(model, ids, mask, s.pad_id)
  flat = lambda x: x.reshape((b * k,) + x.shape[2:])
  # Every beam starts from the prompt: copy the prefilled rows rather than recompute them.
  cache = reorder_cache(model, cache, jnp.repeat(jnp.arange(b), k))
  logits, full_mask, pos = (jnp.repeat(x, k, axis=0) for x in (logits, full_mask, pos))
  prompt, real = (jnp.repeat(x, k, axis=0) for x in _history(ids, mask, s))
  prompt = prompt[:, : ids.shape[1]]
  keep = 2 * k  # enough candidates that num_beams of them are still running after EOS hits
  top_mask = jnp.arange(keep) < k
  lp = s.length_penalty
  seqs = jnp.full((b, k, n), s.pad_id, jnp.int32)

  def advance(st, logits):
    """Picks step i's tokens from the logits after step i-1; `rows` are the parents' cache rows."""
    i = st['i']
    hist = jnp.concatenate([prompt, flat(st['run_seqs'])], 1)
    logp = constrain(jax.nn.log_softmax(logits, axis=-1), hist, real, i, s).reshape(b, k, -1)
    v = logp.shape[-1]
    logp = (logp + st['run_scores'][:, :, None]).reshape(b, k * v)
    top_lp, top_idx = jax.lax.top_k(logp, keep)
    parent, tok = top_idx // v, (top_idx % v).astype(jnp.int32)
    top_seqs = _gather(st['run_seqs'], parent).at[:, :, i].set(tok)
    hits = (tok == s.eos_id) | (i + 1 == n)

    # Running beams: the best k candidates that did not just finish.
    run_lp = top_lp + hits * NEG
    nxt = jax.lax.top_k(run_lp, k)[1]
    run_seqs, run_scores = _gather(top_seqs, nxt), _gather(run_lp, nxt)
    rows = flat(_gather(parent, nxt) + jnp.arange(b)[:, None] * k)

    # Finished pool: merge candidates that finished among the top k, if they can still matter.
    cand = top_lp / (i + 1.0) ** lp
    if s.early_stopping is True:
      cand += jnp.all(st['finished'], -1, keepdims=True) * NEG
    cand += ~st['improvable'][:, None] * NEG
    new_fin = hits & top_mask
    cand += ~new_fin * NEG
    best = jax.lax.top_k(jnp.concatenate([st['scores'], cand], 1), k)[1]
    pick = lambda old, new: _gather(jnp.concatenate([old, new], 1), best)
    seqs, scores = pick(st['seqs'], top_seqs), pick(st['scores'], cand)
    finished = pick(st['finished'], new_fin)

    # HF's heuristic: can the best running beam still beat the worst finished one?
    hyp_len = float(n) if s.early_stopping == 'never' and lp > 0 else i + 1.0
    best_running = run_scores[:, :1] / hyp_len**lp
    worst = jnp.where(finished, scores.min(1, keepdims=True), NEG)
    improvable = st['improvable'] & jnp.any(best_running > worst, -1)
    go = jnp.any(improvable) & ~jnp.all(hits) & (i + 1 < n)
    if s.early_stopping is True:
      go &= ~jnp.all(finished)
    return dict(
      st,
      i=i + 1,
      run_seqs=run_seqs,
      run_scores=run_scores,
      rows=rows,
      seqs=seqs,
      scores=scores,
      finished=finished,
      improvable=improvable,
      go=go,
    )

  def body(st, params):
    cache = reorder_cache(model, st['cache'], st['rows'])
    tokens = flat(jax.lax.dynamic_index_in_dim(st['run_seqs'], st['i'] - 1, 2, keepdims=False))
    logits, cache = step(model, params, cache, tokens, pos + st['i'] - 1, full_mask)
    return advance(dict(st, cache=cache), logits)

  state = advance(
    dict(
      i=jnp.int32(0),
      cache=cache,
      run_seqs=seqs,
      run_scores=jnp.zeros((b, k)).at[:, 1:].set(NEG),
      rows=jnp.arange(b * k),
      seqs=seqs,
      scores=jnp.full((b, k), NEG),
      finished=jnp.zeros((b, k), bool),
      improvable=jnp.ones((b,), bool),
      go=jnp.array(True),
    ),
    logits,
  )
  st = _loop(lambda st: st['go'], body, state, params, carry_params)
  return st['seqs'], st['scores']


# ----------------------------------------------------------------------------- public API


def _shard_params(model, params, mesh):
  """Lays params out as `lm.sharding.RULES` say (a no-op for params already placed so)."""
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32)))
  shardings = sharding.to_shardings(sharding.logical_specs(abstract)['params'], mesh)
  return jax.device_put(params, shardings)


def _trim(row, eos_id):
  row = [int(t) for t in row]
  return row[: row.index(eos_id) + 1] if eos_id in row else row


def generate(
  model,
  params,
  prompts: Union[Sequence[Sequence[int]], np.ndarray],
  *,
  max_new_tokens: Optional[int] = None,
  max_length: Optional[int] = None,
  strategy: str = 'greedy',
  temperature: float = 1.0,
  top_k: int = 0,
  top_p: float = 1.0,
  num_beams: int = 1,
  length_penalty: float = 1.0,
  early_stopping: Union[bool, str] = False,
  num_return_sequences: int = 1,
  eos_id: Optional[int] = None,
  pad_id: int = 0,
  repetition_penalty: float = 1.0,
  no_repeat_ngram_size: int = 0,
  min_new_tokens: int = 0,
  seed: int = 0,
  mesh=None,
  prompt_len: int = 0,
) -> list:
  """Continuations of each prompt: result[prompt][sequence] is a list of new token ids.

  prompts: token-id lists (any lengths) or a [B, T] array of equal-length prompts.
  Length: exactly one of `max_new_tokens` and `max_length` (HF's: prompt included, the longest
  prompt of the batch counting, so every row gets max_length - longest new tokens).
  Each continuation ends at (and includes) `eos_id`, or has that many tokens.
  `repetition_penalty` (HF's CTRL penalty: a seen token's logit is divided by it when
  positive, multiplied when negative), `no_repeat_ngram_size` and `min_new_tokens` (EOS banned
  until then) act as HF's processors of the same names, for every strategy.
  'sample' draws `num_return_sequences` independent samples per prompt; 'beam' returns
  the best `num_return_sequences <= num_beams` beams, best first. A fixed `seed` gives
  the same samples. With `mesh`, params and the batch are sharded by `lm.sharding`'s
  rules (the batch is padded with dummy rows to a multiple of the data-parallel size).
  `prompt_len` left-pads every batch to at least that length, so batches of different prompt
  lengths share one compiled program.
  """
  prompts = [list(map(int, p)) for p in prompts]
  if strategy not in ('greedy', 'sample', 'beam'):
    raise ValueError(f"strategy must be 'greedy', 'sample' or 'beam', got {strategy!r}.")
  if strategy == 'greedy' and num_return_sequences != 1:
    raise ValueError('greedy decoding returns one sequence per prompt; use sample or beam.')
  if strategy == 'beam' and not 1 <= num_return_sequences <= num_beams:
    raise ValueError(
      f'num_return_sequences={num_return_sequences} must be in [1, num_beams={num_beams}].'
    )
  if strategy == 'sample' and temperature <= 0:
    raise ValueError('temperature must be > 0 for sampling; use strategy=greedy instead.')
  if not prompts:
    raise ValueError('generate needs at least one prompt.')
  longest = max(len(p) for p in prompts)
  if (max_new_tokens is None) == (max_length is None):
    raise ValueError(
      'pass exactly one of max_new_tokens (tokens to add) and max_length (prompt included).'
    )
  if max_length is not None:  # an encoder-decoder's counts the decoder's start token (HF's)
    max_new_tokens = int(max_length) - (1 if is_encoder_decoder(model) else longest)
    if max_new_tokens < 1:
      raise ValueError(
        f'max_length={max_length} leaves no room after the longest prompt ({longest} tokens): '
        'raise max_length or pass max_new_tokens.'
      )
  if max_new_tokens < 1:
    raise ValueError('max_new_tokens must be >= 1.')
  if repetition_penalty <= 0:
    raise ValueError(f'repetition_penalty={repetition_penalty} must be > 0 (1: off).')
  if no_repeat_ngram_size < 0 or min_new_tokens < 0:
    raise ValueError('no_repeat_ngram_size and min_new_tokens must be >= 0 (0: off).')
  cfg = model.cfg
  longest = max(longest, prompt_len)  # the padded prompt width the cache must hold
  if cfg.position == 'learned' and longest + max_new_tokens > cfg.max_len:
    raise ValueError(
      f'prompt ({longest}) + max_new_tokens ({max_new_tokens}) exceeds the '
      f'model max_len {cfg.max_len}.'
    )
  s = Settings(
    max_new_tokens=max_new_tokens,
    strategy=strategy,
    temperature=float(temperature),
    top_k=int(top_k),
    top_p=float(top_p),
    num_beams=int(num_beams) if strategy == 'beam' else 1,
    length_penalty=float(length_penalty),
    early_stopping=early_stopping,
    eos_id=-1 if eos_id is None else int(eos_id),
    pad_id=int(pad_id),
    repetition_penalty=float(repetition_penalty),
    no_repeat_ngram_size=int(no_repeat_ngram_size),
    min_new_tokens=int(min_new_tokens),
  )

  copies = num_return_sequences if strategy == 'sample' else 1
  rows = [p for p in prompts for _ in range(copies)]
  real = len(rows)
  if mesh is not None:  # dummy rows so the batch splits evenly over data x fsdp
    shards = mesh.shape['data'] * mesh.shape['fsdp']
    rows += [[pad_id]] * (-real % shards)
  ids, mask = left_pad(rows, pad_id, prompt_len)

  def whole(x):  # a global array gathered (every process joins); one process's own, as it is
    return np.asarray(x) if getattr(x, 'is_fully_addressable', True) else sharding.gather(x)

  def run(params, ids, mask):  # the outputs whole on every process
    search, dec = beam_search, decode
    if _widens(model, params):  # no widened copy of the model (`_loop`)
      cpu = _on_cpu(params)
      search, dec = _lean(beam_search.__wrapped__, cpu), _lean(decode.__wrapped__, cpu)
    if strategy == 'beam':
      return whole(search(model, params, ids, mask, s)[0])[:, :num_return_sequences]
    out = dec(model, params, ids, mask, jax.random.PRNGKey(seed), s)
    return whole(out)[:, None]

  if mesh is None:
    out = run(params, ids, mask)
  else:  # each process puts only its own rows
    mine = sharding.process_rows(len(ids), mesh)
    with sharding.use(mesh):
      out = run(
        _shard_params(model, params, mesh), *sharding.shard_batch((ids[mine], mask[mine]), mesh)
      )
  out = out[:real].reshape(len(prompts), -1, max_new_tokens)
  return [[_trim(r, s.eos_id) for r in per_prompt] for per_prompt in out]
