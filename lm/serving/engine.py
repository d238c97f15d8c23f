"""Continuous batching for a `lm.models.Decoder`: a fixed number of decoding slots over one
preallocated KV cache, new requests prefilled into free slots between decode steps, and every
sequence retired (its slot freed) the step it ends.

Two jitted, fixed-shape programs do the work (`prefill_into_slot`, `decode_step`), both built on
`lm.generate`'s `prefill` / `step`, so a slot computes what `lm.generate.generate` computes for
that prompt alone: greedy tokens are the same whichever requests share the batch, and a seeded
sample equals `generate(..., strategy='sample', seed=seed)`'s for the prompt alone.

Slots never couple: the cache's `cache_index` is a vector (one write index and causal horizon
per row, see `lm.models.layers.Attention`), positions are per slot, and each slot keeps its own
padding mask over the cache. A prompt is left-padded to a bucket length (few compiled shapes)
and prefilled on a one-row cache that is then copied into its slot's row.

The engine is plain Python around those two programs: `submit` (any thread) queues a request,
`step` (one thread) admits, decodes one token for every active slot and retires; `start` runs
`step` in a background thread. Tokens reach the caller through `Request.events` (streaming) or
`Request.wait()`.
"""

import dataclasses
import logging
import functools
import queue
import secrets
import threading
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lm import generate as G
from lm import progress


@dataclasses.dataclass(frozen=True)
class Sampling:
  """One request's settings. temperature 0 is greedy; top_k 0 and top_p 1 are off; `seed` None
  draws one. `stop`: called with the tokens so far, True ends the request (stop sequences)."""

  max_tokens: int = 16
  temperature: float = 0.0
  top_p: float = 1.0
  top_k: int = 0
  seed: Optional[int] = None
  stop: Optional[Callable[[list], bool]] = None


class QueueFull(Exception):
  """The engine's queue of waiting requests is full (a server answers 429 / 503)."""


@dataclasses.dataclass
class Token:
  id: int
  logprob: float  # under the model's distribution (before temperature and filtering)
  top: list  # [(id, logprob)], best first


class Request:
  """A submitted prompt: `tokens` grow as it decodes; `events` gets each `Token` as it comes, then
  None at the end; `finish_reason` is 'stop' (EOS or a stop sequence), 'length' or 'cancelled'."""

  def __init__(self, prompt: Sequence[int], sampling: Sampling, listener=None):
    self.prompt = [int(t) for t in prompt]
    self.listener = listener  # also called with each event, on the engine's thread (asyncio)
    self.sampling = sampling
    self.tokens: list[Token] = []
    self.finish_reason: Optional[str] = None
    self.events: queue.Queue = queue.Queue()
    self._done = threading.Event()
    self._cancel = False
    self.submitted = time.monotonic()

  @property
  def ids(self) -> list:
    return [t.id for t in self.tokens]

  @property
  def done(self) -> bool:
    return self._done.is_set()

  def cancel(self):
    """Retires the request at the engine's next step (a client gone or timed out)."""
    self._cancel = True

  def wait(self, timeout: Optional[float] = None) -> bool:
    return self._done.wait(timeout)

  def _emit(self, tok: Token):
    self.tokens.append(tok)
    self._put(tok)

  def _put(self, event):
    self.events.put(event)
    if self.listener is not None:
      self.listener(event)

  def _finish(self, reason: str):
    self.finish_reason = reason
    self._put(None)
    self._done.set()


# ----------------------------------------------------------------------------- jitted programs


def _pick(logits, temperature, top_k, top_p, keys, count, num_top: int):
  """Per row: the next token (argmax where temperature is 0, else a draw after temperature, top-k
  and top-p as `lm.generate.process_logits`, keyed by fold_in(key, count) as `decode`), its
  log-probability and the `num_top` best (ids, log-probs)."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  v = logits.shape[-1]
  sampled = temperature > 0
  # Each filter and the draw run only when some row needs them (lax.cond runs one branch): a
  # vocabulary sort costs more than the rest of a small model's step on CPU.
  by_k = sampled & (top_k > 0) & (top_k < v)
  by_p = sampled & (top_p < 1.0)

  def cut_k(x):
    kth = jnp.take_along_axis(-jnp.sort(-x, axis=-1), jnp.clip(top_k - 1, 0, v - 1)[:, None], -1)
    return jnp.where(by_k[:, None] & (x < kth), -jnp.inf, x)

  def cut_p(x):
    return jnp.where(by_p[:, None] & G.top_p_drop(x, top_p[:, None]), -jnp.inf, x)

  def draw(logits):
    x = logits / jnp.where(sampled, temperature, 1.0)[:, None]
    x = jax.lax.cond(by_k.any(), cut_k, lambda x: x, x)
    x = jax.lax.cond(by_p.any(), cut_p, lambda x: x, x)
    return G.draw_rows(jax.vmap(jax.random.fold_in)(keys, count), x)  # as lm.generate.decode

  greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  tok = jnp.where(sampled, jax.lax.cond(sampled.any(), draw, lambda _: greedy, logits), greedy)
  top_lp, top_ids = jax.lax.top_k(logp, num_top)
  return tok, jnp.take_along_axis(logp, tok[:, None], -1)[:, 0], top_ids, top_lp


def _is_index(axis):
  return axis is None  # cache leaves without a row axis: the cache_index


@functools.partial(jax.jit, static_argnames=('model', 'num_top'), donate_argnames=('cache', 'mask'))
def prefill_into_slot(model, num_top, params, cache, mask, slot, ids, prompt_mask, sampling, key):
  """Prefills one left-padded prompt (ids, prompt_mask [1, P]) into row `slot` of the slots'
  cache and mask [S, L]; returns (cache, mask, first token, its log-prob, top ids, top log-probs).

  The prompt runs on a fresh one-row cache of the same length L (`lm.generate.prefill`), then
  replaces the slot's whole row, so nothing of the slot's previous sequence survives."""
  length = mask.shape[1]
  logits, row, row_mask, _ = G.prefill(model, params, ids, prompt_mask, length - ids.shape[1])

  def put(big, one, axis):
    if _is_index(axis):  # [S] (or [layers, S]) per-row write indices
      return big.at[..., slot].set(one)
    return jax.lax.dynamic_update_slice_in_dim(big, one.astype(big.dtype), slot, axis)

  cache = jax.tree.map(put, cache, row, G.cache_batch_axes(model))
  mask = mask.at[slot].set(row_mask[0].astype(mask.dtype))
  temperature, top_k, top_p = sampling
  out = _pick(
    logits, temperature[None], top_k[None], top_p[None], key[None], jnp.zeros(1, jnp.int32), num_top
  )
  return (cache, mask) + tuple(x[0] for x in out)


def _rows(x, axis, rows: int):
  """The first `rows` cache rows of one cache leaf."""
  return x[..., :rows] if _is_index(axis) else jax.lax.slice_in_dim(x, 0, rows, axis=axis)


@functools.partial(
  jax.jit, static_argnames=('model', 'num_top', 'rows'), donate_argnames=('cache',)
)
def decode_step(
  model, num_top, params, cache, mask, tokens, positions, active, sampling, keys, counts, rows=None
):
  """One token for each of the first `rows` slots (default all S; the engine passes a power of two
  covering every active slot, so a few requests cost a few rows, not S): tokens, positions,
  active, counts (tokens generated so far) are [S], sampling = (temperature, top_k, top_p) [S]
  each, keys [S, 2]. Inactive slots among those rows compute too (fixed shape) but write at cache
  slot 0 of their own row, which a later prefill replaces. Returns (cache, then for the first
  `rows` slots: tokens, log-probs, top ids, top log-probs)."""
  rows = rows or mask.shape[0]
  axes = G.cache_batch_axes(model)
  part = jax.tree.map(lambda x, a: _rows(x, a, rows), cache, axes)
  cut = lambda x: x[:rows]  # noqa: E731
  logits, part = G.step(model, params, part, cut(tokens), cut(positions), cut(mask))
  reset = lambda x, axis: jnp.where(cut(active), x, 0) if _is_index(axis) else x
  part = jax.tree.map(reset, part, axes)

  def put(big, small, axis):
    if _is_index(axis):
      return big.at[..., :rows].set(small)
    return jax.lax.dynamic_update_slice_in_dim(big, small, 0, axis)

  cache = jax.tree.map(put, cache, part, axes)
  sampling = tuple(cut(x) for x in sampling)
  return (cache,) + _pick(logits, *sampling, cut(keys), cut(counts), num_top)


@functools.partial(jax.jit, static_argnames=('model', 'num_top'))
def score_tokens(model, num_top, params, ids):
  """log p(ids[t] | ids[<t]) [B, T-1] and the `num_top` best (ids, log-probs) at each of those
  positions, from one forward pass (a causal model: right padding changes no earlier position).
  Token and top log-probs come from the same array, so a greedy token's equals the best's."""
  logits = model.apply({'params': params}, ids)[:, :-1].astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  top_lp, top_ids = jax.lax.top_k(logp, num_top)
  return jnp.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0], top_ids, top_lp


# ----------------------------------------------------------------------------- the engine


def buckets(min_len: int, max_len: int) -> list:
  """Prompt lengths compiled for: powers of two from `min_len`, and `max_len`."""
  out, b = [], min_len
  while b < max_len:
    out.append(b)
    b *= 2
  return out + [max_len]


class Engine:
  """Continuous batching over `slots` rows of a cache `max_len` long (default: the model's).

  `eos_id` ends a sequence (included in its tokens, as `lm.generate`); `num_top`: how many top
  log-probs each token carries; `queue_size`: waiting requests beyond which `submit` raises
  `QueueFull`; `prefills_per_step`: admissions between two decode steps (bounds the stall the
  running sequences see); `min_rows`: the fewest rows a decode step runs (one row takes XLA's
  CPU matrix-vector path, ~4x slower than two rows at GPT-2 small's size)."""

  def __init__(
    self,
    model,
    params,
    *,
    slots: int = 8,
    max_len: Optional[int] = None,
    eos_id: Optional[int] = None,
    pad_id: int = 0,
    num_top: int = 5,
    queue_size: int = 256,
    min_bucket: int = 16,
    prefills_per_step: Optional[int] = None,
    min_rows: int = 2,
  ):
    self.model, self.params = model, params
    self.slots, self.length = slots, int(max_len or model.cfg.max_len)
    self.eos_id, self.pad_id, self.num_top = eos_id, pad_id, num_top
    self.buckets = buckets(min(min_bucket, self.length), self.length)
    self.prefills_per_step = prefills_per_step or slots
    self.min_rows = min_rows
    self.waiting: queue.Queue = queue.Queue(maxsize=queue_size)
    cache = G.init_cache(model, slots, self.length)
    index = lambda x, axis: jnp.zeros(x.shape + (slots,), jnp.int32) if _is_index(axis) else x
    # Placed as the programs' outputs are (replicated over the params' mesh): a first cache
    # placed otherwise would compile each prefill bucket twice (its first call, then the rest).
    where = getattr(jax.tree.leaves(params)[0], 'sharding', None)
    if isinstance(where, jax.sharding.NamedSharding):
      where = jax.sharding.NamedSharding(where.mesh, jax.sharding.PartitionSpec())
    else:
      where = jax.devices()[0]
    self.cache = jax.device_put(jax.tree.map(index, cache, G.cache_batch_axes(model)), where)
    self.mask = jax.device_put(jnp.zeros((slots, self.length), jnp.int32), where)
    self.running: list[Optional[Request]] = [None] * slots
    self.tokens = np.zeros(slots, np.int32)
    self.positions = np.zeros(slots, np.int32)
    self.counts = np.zeros(slots, np.int32)
    self.temperature = np.zeros(slots, np.float32)
    self.top_k = np.zeros(slots, np.int32)
    self.top_p = np.ones(slots, np.float32)
    self.keys = np.zeros((slots, 2), np.uint32)
    self.steps = 0  # decode steps run (tests watch admissions against it)
    self._wake = threading.Condition()
    self._thread: Optional[threading.Thread] = None
    self._stopping = False

  # -- submission (any thread)

  @property
  def context(self) -> int:
    """The longest sequence (prompt + new tokens) a request may have."""
    learned = self.model.cfg.position == 'learned'
    return min(self.length, self.model.cfg.max_len) if learned else self.length

  def check(self, prompt: Sequence[int], sampling: Sampling):
    """Raises ValueError for a request the engine cannot serve (a server's 400)."""
    if not len(prompt):
      raise ValueError('the prompt is empty (there is no BOS to start from).')
    if sampling.max_tokens < 1:
      raise ValueError('max_tokens must be >= 1.')
    limit = self.context
    if len(prompt) + sampling.max_tokens > limit:
      raise ValueError(
        f'the prompt ({len(prompt)} tokens) + max_tokens ({sampling.max_tokens}) exceeds the '
        f"model's context of {limit} tokens."
      )
    if sampling.temperature < 0 or not 0 < sampling.top_p <= 1 or sampling.top_k < 0:
      raise ValueError('need temperature >= 0, 0 < top_p <= 1 and top_k >= 0.')
    bad = [t for t in prompt if not 0 <= int(t) < self.model.cfg.vocab_size]
    if bad:
      raise ValueError(f'token ids out of the vocabulary: {bad[:5]}.')

  def score(self, prompt: Sequence[int]) -> list:
    """`Token(id, log p(id | earlier tokens), top)` for prompt[1:]: the prompt's own log-probs
    (OpenAI's `echo` with `logprobs`, what lm-eval's loglikelihood reads). One forward pass on
    the prompt right-padded to a bucket, outside the slots; safe from any thread."""
    prompt, limit = [int(t) for t in prompt], self.context
    if not prompt or len(prompt) > limit:
      raise ValueError(f"a prompt to score needs 1 to {limit} tokens (the model's context).")
    if any(not 0 <= t < self.model.cfg.vocab_size for t in prompt):
      raise ValueError('token ids out of the vocabulary.')
    ids = np.full((1, next(b for b in self.buckets if len(prompt) <= b)), self.pad_id, np.int32)
    ids[0, : len(prompt)] = prompt
    out = score_tokens(self.model, self.num_top, self.params, ids)
    lps, top_ids, top_lps = (np.asarray(x[0]) for x in out)
    return [
      Token(t, float(lps[i]), list(zip(top_ids[i].tolist(), top_lps[i].tolist())))
      for i, t in enumerate(prompt[1:])
    ]

  def submit(
    self, prompt: Sequence[int], sampling: Sampling = Sampling(), listener=None
  ) -> Request:
    self.check(prompt, sampling)
    if self._stopping:
      raise QueueFull('the engine is shutting down.')
    req = Request(prompt, sampling, listener)
    try:
      self.waiting.put_nowait(req)
    except queue.Full:
      raise QueueFull(f'{self.waiting.maxsize} requests are waiting already.') from None
    with self._wake:
      self._wake.notify()
    return req

  # -- the loop (one thread)

  @property
  def busy(self) -> bool:
    return any(r is not None for r in self.running) or not self.waiting.empty()

  def _bucket(self, n: int, max_tokens: int) -> int:
    room = self.length - max_tokens  # left padding takes cache slots too
    return next((b for b in self.buckets if n <= b <= room), room)

  def _sampling(self, i):
    return (self.temperature[i], self.top_k[i], self.top_p[i])

  def _admit(self, req: Request, i: int):
    s = req.sampling
    ids, pmask = G.left_pad([req.prompt], self.pad_id, self._bucket(len(req.prompt), s.max_tokens))
    seed = secrets.randbits(31) if s.seed is None else s.seed
    self.keys[i] = np.asarray(jax.random.key_data(jax.random.PRNGKey(seed)))
    self.temperature[i], self.top_k[i], self.top_p[i] = s.temperature, s.top_k, s.top_p
    self.cache, self.mask, tok, lp, top_ids, top_lp = prefill_into_slot(
      self.model, self.num_top, self.params, self.cache, self.mask, jnp.int32(i), ids, pmask,
      self._sampling(i), self.keys[i],
    )  # fmt: skip
    self.running[i] = req
    self.positions[i], self.counts[i] = len(req.prompt), 0
    self._advance(i, int(tok), float(lp), np.asarray(top_ids), np.asarray(top_lp))

  def _advance(self, i: int, tok: int, lp: float, top_ids, top_lp):
    """Records slot i's new token and retires its request if it ended."""
    req = self.running[i]
    req._emit(Token(tok, lp, list(zip(top_ids.tolist(), top_lp.tolist()))))
    self.tokens[i] = tok
    self.counts[i] += 1
    s = req.sampling
    if tok == self.eos_id or (s.stop is not None and s.stop(req.ids)):
      self._retire(i, 'stop')
    elif self.counts[i] >= s.max_tokens:
      self._retire(i, 'length')

  def _retire(self, i: int, reason: str):
    self.running[i]._finish(reason)
    self.running[i] = None

  def step(self) -> bool:
    """Cancels, admits into free slots, decodes one token for every running slot, retires.
    Returns whether there was anything to do."""
    for i, req in enumerate(self.running):
      if req is not None and req._cancel:
        self._retire(i, 'cancelled')
    admitted = 0
    for i in range(self.slots):
      if admitted == self.prefills_per_step:
        break
      while self.running[i] is None:
        try:
          req = self.waiting.get_nowait()
        except queue.Empty:
          break
        if req._cancel:
          req._finish('cancelled')
          continue
        self._admit(req, i)
        admitted += 1
    active = np.array([r is not None for r in self.running])
    if not active.any():
      return admitted > 0
    rows = max(1 << int(np.flatnonzero(active)[-1]).bit_length(), self.min_rows)
    rows = min(rows, self.slots)
    self.cache, toks, lps, top_ids, top_lps = decode_step(
      self.model, self.num_top, self.params, self.cache, self.mask, self.tokens,
      np.where(active, self.positions + self.counts - 1, 0).astype(np.int32), active,
      (self.temperature, self.top_k, self.top_p), self.keys, self.counts, rows=rows,
    )  # fmt: skip
    self.steps += 1
    toks, lps, top_ids, top_lps = (np.asarray(x) for x in (toks, lps, top_ids, top_lps))
    for i in np.flatnonzero(active):
      self._advance(i, int(toks[i]), float(lps[i]), top_ids[i], top_lps[i])
    return True

  def run(self, requests: Sequence[Request] = ()):
    """Steps until every given request (all work, when none given) is done: a synchronous use
    (batched generation, rollouts), counted on a progress bar on a terminal."""
    if not requests:
      while self.busy:
        self.step()
      return
    with progress.bar('generate', len(requests), 'request') as bar:
      done = sum(r.done for r in requests)
      while done < len(requests):
        self.step()
        done = sum(r.done for r in requests)
        bar.update(done - bar.n)

  def generate(self, prompts: Sequence[Sequence[int]], sampling: Sampling = Sampling()) -> list:
    """Token ids of each prompt's continuation, all decoded together (no thread)."""
    reqs = [self.submit(p, sampling) for p in prompts]
    self.run(reqs)
    return [r.ids for r in reqs]

  def generate_rows(
    self, prompts: Sequence[Sequence[int]], samplings: Sequence[Sampling], params=None
  ) -> list:
    """`generate` with a `Sampling` per prompt (per-row seeds), any number of prompts (more than
    the queue holds wait their turn). `params`: new weights of the same shapes to decode with
    from now on (RL's current policy), no recompilation (they are a jit argument)."""
    if params is not None:
      self.params = params
    reqs, todo = [], list(zip(prompts, samplings))
    while todo:
      try:
        reqs.append(self.submit(*todo[0]))
        todo.pop(0)
      except QueueFull:
        if self._stopping:
          raise
        self.step()
    self.run(reqs)
    return [r.ids for r in reqs]

  # -- background thread

  def start(self):
    """Runs `step` in a daemon thread until `shutdown`."""
    self._thread = threading.Thread(target=self._loop, name='lm-engine', daemon=True)
    self._thread.start()
    return self

  def _loop(self):
    while True:
      with self._wake:
        while not self.busy and not self._stopping:
          self._wake.wait(0.5)
      if self._stopping and not self.busy:
        return
      try:
        self.step()
      except Exception:  # noqa: BLE001 - fail the requests, keep serving the next ones
        logging.exception('engine step failed')
        for i, req in enumerate(self.running):
          if req is not None:
            self._retire(i, 'error')

  def shutdown(self, timeout: Optional[float] = None):
    """Drains: no new requests; the queued and running ones finish; then the thread exits."""
    self._stopping = True
    with self._wake:
      self._wake.notify()
    if self._thread is not None:
      self._thread.join(timeout)


def like_static_batches(
  model, params, slots: int, prompt_len: int, max_new_tokens: int, eos_id, pad_id
):
  """An engine laid out as `lm.generate`'s static batches (ppo.py's rollouts, sft.py's
  generations): a cache of prompt_len + max_new_tokens positions, prompts padded to prompt_len,
  only the chosen token's log-prob; a full batch (slots = rows) computes what the batch does."""
  return Engine(
    model,
    params,
    slots=slots,
    max_len=prompt_len + max_new_tokens,
    eos_id=eos_id,
    pad_id=pad_id,
    num_top=1,
    min_bucket=prompt_len,
  )
