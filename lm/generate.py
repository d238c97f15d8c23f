"""Autoregressive generation for `lm.model.Decoder`: greedy, sampling and beam search.

The whole decode (prefill, then a `lax.while_loop` of one-token steps) is one jitted
function over a fixed-size KV cache, so every step costs the same whatever its position
and the host only sees the final tokens.

Semantics follow Hugging Face `generate` so outputs can be compared token for token:
  * Prompts of different lengths are LEFT-padded (the cache index is shared by all rows);
    positions count real tokens only.
  * Sampling applies temperature, then top-k, then top-p (HF's processor order).
  * Beam search is HF's vectorised beam search (transformers >= 4.50): 2*num_beams
    candidates per step, finished score = sum_logprobs / generated_len ** length_penalty,
    `early_stopping` in {False (HF default), True, 'never'}.
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


def _cache_shapes(model, batch: int, length: int):
  return jax.eval_shape(
    lambda: nn.unbox(
      model.init(jax.random.PRNGKey(0), jnp.zeros((batch, length), jnp.int32), decode=True)
    )['cache']
  )


def init_cache(model, batch: int, length: int):
  """Zeroed cache for `batch` rows and `length` slots, without running (or allocating) init."""
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), _cache_shapes(model, batch, length))


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


def forward(model, params, cache, ids, positions, mask):
  """Appends `ids` [B, T] at the cache index; returns (float32 logits of the last position, cache)."""
  logits, mut = model.apply(
    {'params': params, 'cache': cache},
    ids,
    positions=positions,
    attention_mask=mask,
    decode=True,
    mutable=['cache'],
    method=_last_logits,
  )
  return logits.astype(jnp.float32), mut['cache']


def prefill(model, params, ids, mask, max_new_tokens: int):
  """Runs the prompt through a fresh cache sized for P + max_new_tokens slots.

  Returns (last logits [B, V], cache, slot mask [B, P + N], next position [B]).
  """
  b, p = ids.shape
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
    order = jnp.argsort(-logits, axis=-1)
    probs = jax.nn.softmax(jnp.take_along_axis(logits, order, -1), axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    drop_sorted = mass_before >= s.top_p
    drop_sorted = drop_sorted.at[..., 0].set(False)
    drop = (
      jnp.zeros_like(drop_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
    )
    logits = jnp.where(drop, -jnp.inf, logits)
  return logits


def choose(logits, rng, s: Settings):
  if s.strategy == 'greedy':
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, process_logits(logits, s), axis=-1).astype(jnp.int32)


# ----------------------------------------------------------------------------- decode loops


@functools.partial(jax.jit, static_argnames=('model', 's'))
def decode(model, params, ids, mask, rng, s: Settings):
  """Greedy / sampled continuations [B, N]; rows past their EOS hold `pad_id`.

  The loop exits as soon as every row has hit EOS.
  """
  n = s.max_new_tokens
  logits, cache, full_mask, pos = prefill(model, params, ids, mask, n)
  tok = choose(logits, jax.random.fold_in(rng, 0), s)
  out = jnp.full((ids.shape[0], n), s.pad_id, jnp.int32).at[:, 0].set(tok)
  state = (jnp.int32(1), cache, tok, out, tok == s.eos_id)

  def cond(state):
    i, _, _, _, done = state
    return (i < n) & ~jnp.all(done)

  def body(state):
    i, cache, tok, out, done = state
    logits, cache = step(model, params, cache, tok, pos + i - 1, full_mask)
    tok = jnp.where(done, s.pad_id, choose(logits, jax.random.fold_in(rng, i), s))
    return i + 1, cache, tok, out.at[:, i].set(tok), done | (tok == s.eos_id)

  return jax.lax.while_loop(cond, body, state)[3]


def _gather(x, idx):
  """x [B, K, ...] indexed along the beam axis by idx [B, K']."""
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


@functools.partial(jax.jit, static_argnames=('model', 's'))
def beam_search(model, params, ids, mask, s: Settings):
  """HF beam search. Returns (sequences [B, K, N], scores [B, K]), best first.

  Mirrors `GenerationMixin._beam_search` step for step (including its early-stop
  heuristic and the finished-only final pool), so tie-free inputs give HF's tokens.
  """
  b, k, n = ids.shape[0], s.num_beams, s.max_new_tokens
  logits, cache, full_mask, pos = prefill(model, params, ids, mask, n)
  flat = lambda x: x.reshape((b * k,) + x.shape[2:])
  # Every beam starts from the prompt: copy the prefilled rows rather than recompute them.
  cache = reorder_cache(model, cache, jnp.repeat(jnp.arange(b), k))
  logits, full_mask, pos = (jnp.repeat(x, k, axis=0) for x in (logits, full_mask, pos))
  keep = 2 * k  # enough candidates that num_beams of them are still running after EOS hits
  top_mask = jnp.arange(keep) < k
  lp = s.length_penalty
  seqs = jnp.full((b, k, n), s.pad_id, jnp.int32)

  def advance(st, logits):
    """Picks step i's tokens from the logits after step i-1; `rows` are the parents' cache rows."""
    i = st['i']
    logp = jax.nn.log_softmax(logits, axis=-1).reshape(b, k, -1)
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

  def body(st):
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
  st = jax.lax.while_loop(lambda st: st['go'], body, state)
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
  max_new_tokens: int,
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
  seed: int = 0,
  mesh=None,
  prompt_len: int = 0,
) -> list:
  """Continuations of each prompt: result[prompt][sequence] is a list of new token ids.

  prompts: token-id lists (any lengths) or a [B, T] array of equal-length prompts.
  Each continuation ends at (and includes) `eos_id`, or has `max_new_tokens` tokens.
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
  if max_new_tokens < 1:
    raise ValueError('max_new_tokens must be >= 1.')
  cfg = model.cfg
  longest = max(max(len(p) for p in prompts), prompt_len)
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
  )

  copies = num_return_sequences if strategy == 'sample' else 1
  rows = [p for p in prompts for _ in range(copies)]
  real = len(rows)
  if mesh is not None:  # dummy rows so the batch splits evenly over data x fsdp
    shards = mesh.shape['data'] * mesh.shape['fsdp']
    rows += [[pad_id]] * (-real % shards)
  ids, mask = left_pad(rows, pad_id, prompt_len)

  def run(params, ids, mask):
    if strategy == 'beam':
      return np.asarray(beam_search(model, params, ids, mask, s)[0])[:, :num_return_sequences]
    out = decode(model, params, ids, mask, jax.random.PRNGKey(seed), s)
    return np.asarray(out)[:, None]

  if mesh is None:
    out = run(params, ids, mask)
  else:
    with sharding.use(mesh):
      out = run(_shard_params(model, params, mesh), *sharding.shard_batch((ids, mask), mesh))
  out = out[:real].reshape(len(prompts), -1, max_new_tokens)
  return [[_trim(r, s.eos_id) for r in per_prompt] for per_prompt in out]
