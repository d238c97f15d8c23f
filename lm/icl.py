r"""In-context learning: demonstration selection and few-shot classification with a causal LM.

A trained decoder (a train.py workdir or an HF GPT-2 directory) is prompted with k labelled
demonstrations from a pool followed by the test input, and each label is scored by the
log-likelihood of its verbalizer tokens:

  Text: <demo text, truncated>\nTopic: <label>\n\n ... Text: <test text>\nTopic:| <label?>

Scoring (`score_candidates`): all candidates of one test example are rows of one batch (several
test examples share a jitted call), right-padded with an attention mask (causal attention means
padding after a row's last token can never change it). A candidate's score is the sum
(``score='sum'``) or the mean (``score='mean'``, the default: labels have different token counts)
of ``log p(label token | prompt, earlier label tokens)``; the prediction is the argmax.

Selection strategies, one interface (`select(strategy, k, features, query, seed)` -> pool indices,
best first), over `Features` precomputed once per run:

* ``random``: k distinct pool items, drawn with ``np.random.default_rng([seed, query])``.
* ``similarity``: kNN by cosine similarity of the model's embeddings (final hidden states
  mean-pooled over the input's real tokens) to the query's; most similar first.
* ``diversity``: k-means (scikit-learn, k clusters, on L2-normalised embeddings) over the pool;
  per cluster the member nearest its centroid; biggest cluster first. Query-independent.
* ``difficulty``: the LM's mean token loss on each formatted demonstration (text and label);
  ``difficulty='easy'`` (default) picks the lowest-loss ones, ``'hard'`` the highest.
  Query-independent.
* ``gradient``: per-example gradients of the LM loss on the input text, with respect to the final
  LayerNorm and the last block (``gradient_params='last'``) or all params, optionally count-sketch
  projected to ``gradient_dim`` dimensions; computed with ``jax.jit(jax.vmap(jax.grad(...)))``
  in batches. The pool items whose gradients have the highest cosine similarity to the query's
  gradient are picked, most similar first.

Evaluation (`evaluate`): accuracy per strategy and k over `runs` = seeds x orderings; every run
shuffles the selected demonstrations with its own seed (k=0 has one run). Reported as mean and
std over runs; the JSON result file lists, per test example, each strategy's selected pool
indices (in prompt order) and prediction for every k and run, plus the pool's texts.

  python eval.py --config=configs/fewshot.py --checkpoint=/tmp/lm_gpt
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

STRATEGIES = ('random', 'similarity', 'diversity', 'difficulty', 'gradient')
QUERY_INDEPENDENT = ('diversity', 'difficulty')  # same demonstrations for every test example


# ------------------------------------------------------------------------------------------------
# Selection.


@dataclasses.dataclass
class Features:
  """What the strategies select from (numpy; each strategy checks for the fields it needs)."""
  num_pool: int
  pool_emb: Optional[np.ndarray] = None    # [N, D] mean-pooled final hidden states
  query_emb: Optional[np.ndarray] = None   # [M, D]
  pool_loss: Optional[np.ndarray] = None   # [N] mean token LM loss of each demonstration
  pool_grad: Optional[np.ndarray] = None   # [N, G] per-example LM-loss gradients (flattened)
  query_grad: Optional[np.ndarray] = None  # [M, G]


def _need(features: Features, *names):
  for n in names:
    if getattr(features, n) is None:
      raise ValueError(f'this strategy needs Features.{n}; compute_features() fills it when the '
                       'strategy is requested.')


def _normalize(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cosine_rank(pool: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k rows of `pool` most cosine-similar to `query`, most similar first
  (ties: lower index first)."""
  scores = _normalize(pool) @ _normalize(query)
  return np.argsort(-scores, kind='stable')[:k]


def select_random(num_pool: int, k: int, seed: int, query: Optional[int] = None) -> np.ndarray:
  rng = np.random.default_rng([seed] if query is None else [seed, query])
  return rng.choice(num_pool, size=min(k, num_pool), replace=False)


def select_diverse(pool_emb: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
  """k-means with k clusters over normalised embeddings; per cluster the member nearest its
  centroid, biggest cluster first."""
  from sklearn.cluster import KMeans  # pylint: disable=g-import-not-at-top
  x = _normalize(pool_emb)
  k = min(k, len(x))
  if k <= 0:
    return np.zeros(0, np.int64)
  km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
  picks, sizes = [], []
  for c in range(k):
    members = np.flatnonzero(km.labels_ == c)
    if not len(members):  # k-means can leave a cluster empty on duplicate points
      continue
    d = np.linalg.norm(x[members] - km.cluster_centers_[c], axis=-1)
    picks.append(members[np.argmin(d)])
    sizes.append(len(members))
  order = np.argsort(-np.asarray(sizes), kind='stable')
  picks = [picks[i] for i in order]
  if len(picks) < k:  # fill from the rest, nearest-to-any-centroid first
    rest = [i for i in np.argsort(km.transform(x).min(-1), kind='stable') if i not in picks]
    picks += rest[:k - len(picks)]
  return np.asarray(picks, np.int64)


def select_by_difficulty(pool_loss: np.ndarray, k: int, order: str = 'easy') -> np.ndarray:
  """'easy': the k lowest-loss items, lowest first; 'hard': the k highest, highest first."""
  if order not in ('easy', 'hard'):
    raise ValueError(f"difficulty={order!r}: use 'easy' (lowest loss) or 'hard' (highest).")
  loss = np.asarray(pool_loss, np.float64)
  return np.argsort(loss if order == 'easy' else -loss, kind='stable')[:k]


def select(strategy: str, k: int, features: Features, query: Optional[int] = None,
           seed: int = 0, difficulty: str = 'easy') -> np.ndarray:
  """Pool indices of k demonstrations for test example `query` (an index into the query rows
  of `features`), best first. One entry point for every strategy in STRATEGIES."""
  if k <= 0:
    return np.zeros(0, np.int64)
  if strategy == 'random':
    return select_random(features.num_pool, k, seed, query)
  if strategy == 'similarity':
    _need(features, 'pool_emb', 'query_emb')
    return cosine_rank(features.pool_emb, features.query_emb[query], k)
  if strategy == 'diversity':
    _need(features, 'pool_emb')
    return select_diverse(features.pool_emb, k, seed)
  if strategy == 'difficulty':
    _need(features, 'pool_loss')
    return select_by_difficulty(features.pool_loss, k, difficulty)
  if strategy == 'gradient':
    _need(features, 'pool_grad', 'query_grad')
    return cosine_rank(features.pool_grad, features.query_grad[query], k)
  raise ValueError(f'unknown strategy {strategy!r}: use one of {STRATEGIES}.')


# ------------------------------------------------------------------------------------------------
# The model side: embeddings, losses, per-example gradients, candidate scoring.


def _bucket(n: int, cap: int) -> int:
  """Padded length: the next multiple of 32 (at least 16), at most `cap` (fewer compiles)."""
  return int(min(cap, max(16, -(-n // 32) * 32)))


def pad(seqs: Sequence[Sequence[int]], length: int, pad_id: int, rows: Optional[int] = None):
  """Right-padded ids [rows, length] and attention mask (1 = real token)."""
  rows = len(seqs) if rows is None else rows
  ids = np.full((rows, length), pad_id, np.int32)
  mask = np.zeros((rows, length), np.int32)
  for i, s in enumerate(seqs):
    if len(s) > length:
      raise ValueError(f'sequence of {len(s)} tokens does not fit length {length}.')
    ids[i, :len(s)] = s
    mask[i, :len(s)] = 1
  return ids, mask


def _token_logprobs(model, params, ids, mask):
  """log p(ids[:, t] | ids[:, :t]) for t >= 1: [B, T-1]."""
  logits = model.apply({'params': params}, ids, attention_mask=mask)
  lp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(lp, ids[:, 1:, None], axis=-1)[..., 0]


class LM:
  """A causal LM's params plus the jitted functions selection and scoring need.

  Every call pads to fixed shapes (rows to `batch_size`, length to a multiple of 32 up to
  `max_len`) so a handful of compilations serve a whole evaluation.
  """

  def __init__(self, model, params, pad_id: int, max_len: int, batch_size: int = 16):
    self.model, self.params = model, params
    self.pad_id, self.max_len, self.batch_size = int(pad_id), int(max_len), int(batch_size)
    self.num_layers = model.cfg.num_layers
    self.scan_layers = model.cfg.scan_layers
    self._hidden = jax.jit(self._pooled_hidden)
    self._nll = jax.jit(self._weighted_nll)
    self._score = jax.jit(self._label_logprob)
    self._grads = {}

  # --- embeddings -------------------------------------------------------------------------------

  def _pooled_hidden(self, params, ids, mask):
    h = self.model.apply({'params': params}, ids, attention_mask=mask, method='hidden')
    m = mask[..., None].astype(jnp.float32)
    return (h.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1.0)

  def embed(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
    """Final hidden states mean-pooled over each sequence's real tokens: [N, D]."""
    return self._batched(seqs, lambda ids, mask: self._hidden(self.params, ids, mask))

  def _batched(self, seqs, fn, weights=None):
    """fn(ids, mask[, weights]) over padded batches of batch_size rows (one compiled shape per
    length bucket), concatenated without the padding rows."""
    out, b = [], self.batch_size
    length = _bucket(max(len(s) for s in seqs), self.max_len)
    for i in range(0, len(seqs), b):
      chunk = seqs[i:i + b]
      args = pad(chunk, length, self.pad_id, rows=b)
      if weights is not None:
        args = (*args, pad(weights[i:i + b], length, 0, rows=b)[0])
      out.append(np.asarray(fn(*args))[:len(chunk)])
    return np.concatenate(out)

  # --- losses -----------------------------------------------------------------------------------

  def _weighted_nll(self, params, ids, mask, weights):
    tok = _token_logprobs(self.model, params, ids, mask)
    w = weights[:, 1:].astype(jnp.float32)
    return -(tok * w).sum(-1) / jnp.maximum(w.sum(-1), 1.0)

  def mean_loss(self, seqs, weights=None) -> np.ndarray:
    """Mean token NLL of each sequence over its target tokens (`weights[i][t]` = 1: token t is
    scored; default every token after the first): [N]."""
    weights = weights or [[0] + [1] * (len(s) - 1) for s in seqs]
    return self._batched(seqs, lambda ids, mask, w: self._nll(self.params, ids, mask, w), weights)

  # --- per-example gradients -------------------------------------------------------------------

  def split_params(self, which: str = 'last'):
    """(selected, rest) of the param tree: 'last' = ln_final and the last block, 'all' = all."""
    from flax import traverse_util  # pylint: disable=g-import-not-at-top
    if which not in ('last', 'all'):
      raise ValueError(f"gradient_params={which!r}: use 'last' or 'all'.")
    last = 'layers' if self.scan_layers else f'layers_{self.num_layers - 1}'
    flat = traverse_util.flatten_dict(self.params)
    chosen = lambda p: which == 'all' or p[0] == 'ln_final' or (p[0] == 'stack' and p[1] == last)
    sel = {p: v for p, v in flat.items() if chosen(p)}
    rest = {p: v for p, v in flat.items() if not chosen(p)}
    return traverse_util.unflatten_dict(sel), traverse_util.unflatten_dict(rest)

  def example_loss(self, selected, rest, ids, mask, weights):
    """Mean token NLL of one unbatched sequence [T] as a function of the selected params."""
    from flax import traverse_util  # pylint: disable=g-import-not-at-top
    params = traverse_util.unflatten_dict({**traverse_util.flatten_dict(rest),
                                           **traverse_util.flatten_dict(selected)})
    tok = _token_logprobs(self.model, params, ids[None], mask[None])[0]
    w = weights[1:].astype(jnp.float32)
    return -(tok * w).sum() / jnp.maximum(w.sum(), 1.0)

  def grad_fn(self, which: str = 'last', dim: int = 0, seed: int = 0):
    """jit(vmap(grad(example_loss))) over the `which` params -> flattened [B, G], or
    count-sketched to [B, dim] (a fixed random bucket and sign per coordinate: inner products
    are preserved in expectation)."""
    key = (which, dim, seed)
    if key not in self._grads:
      from jax.flatten_util import ravel_pytree  # pylint: disable=g-import-not-at-top
      per_example = jax.vmap(jax.grad(self.example_loss), in_axes=(None, None, 0, 0, 0))
      sketch = None
      if dim:
        size = int(sum(np.prod(x.shape) for x in jax.tree.leaves(self.split_params(which)[0])))
        rng = np.random.default_rng(seed)
        bucket = jnp.asarray(rng.integers(0, dim, size), jnp.int32)
        sign = jnp.asarray(rng.choice([-1.0, 1.0], size), jnp.float32)
        sketch = lambda v: jax.ops.segment_sum(v * sign, bucket, num_segments=dim)

      def fn(selected, rest, ids, mask, weights):
        g = per_example(selected, rest, ids, mask, weights)
        flat = jax.vmap(lambda t: ravel_pytree(t)[0].astype(jnp.float32))(g)
        return flat if sketch is None else jax.vmap(sketch)(flat)
      self._grads[key] = jax.jit(fn)
    return self._grads[key]

  def gradients(self, seqs, weights=None, which: str = 'last', dim: int = 0,
                seed: int = 0) -> np.ndarray:
    """Per-example gradients of `mean_loss` w.r.t. the `which` params: [N, G] (G = dim if set)."""
    selected, rest = self.split_params(which)
    fn = self.grad_fn(which, dim, seed)
    weights = weights or [[0] + [1] * (len(s) - 1) for s in seqs]
    return self._batched(seqs, lambda ids, mask, w: fn(selected, rest, ids, mask, w), weights)

  # --- candidate scoring ------------------------------------------------------------------------

  def _label_logprob(self, params, ids, mask, start, targets, target_mask):
    """Per row: sum over label tokens j of log p(targets[j] | ids[:start + j]); [B], and the
    token count. Only the label positions go through the vocab projection."""
    h = self.model.apply({'params': params}, ids, attention_mask=mask, method='hidden')
    pos = jnp.clip(start[:, None] - 1 + jnp.arange(targets.shape[1])[None], 0, ids.shape[1] - 1)
    h = jnp.take_along_axis(h, pos[..., None], axis=1)  # [B, Lc, D]
    logits = self.model.apply({'params': params}, h, method='logits')
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    tok = jnp.take_along_axis(lp, targets[..., None], axis=-1)[..., 0]
    m = target_mask.astype(jnp.float32)
    return (tok * m).sum(-1), m.sum(-1)

  def score_candidates(self, requests, score: str = 'mean') -> list[np.ndarray]:
    """requests: [(prompt ids, [candidate ids, ...]), ...] -> per request, one score per
    candidate: the sum or mean log-prob of the candidate's tokens after the prompt.

    All candidates of a request are rows of the same jitted call; several requests share it.
    """
    if score not in ('sum', 'mean'):
      raise ValueError(f"score={score!r}: use 'sum' or 'mean' (log-prob of the label tokens).")
    if not requests:
      return []
    lc = max(len(c) for _, cands in requests for c in cands)
    longest = max(len(p) + lc for p, _ in requests)
    if longest > self.max_len:
      raise ValueError(f'a prompt of {longest} tokens exceeds max_len={self.max_len}.')
    per_call = max(self.batch_size, max(len(c) for _, c in requests))
    results, i = [], 0
    while i < len(requests):
      group, rows = [], 0
      while i < len(requests) and rows + len(requests[i][1]) <= per_call:
        group.append(requests[i])
        rows += len(requests[i][1])
        i += 1
      seqs, starts, tgts = [], [], []
      for prompt, cands in group:
        for c in cands:
          if not len(c):
            raise ValueError('an empty candidate (label verbalizer) has no tokens to score.')
          seqs.append(list(prompt) + list(c))
          starts.append(len(prompt))
          tgts.append(c)
      length = _bucket(max(len(s) for s in seqs), self.max_len)
      ids, mask = pad(seqs, length, self.pad_id, rows=per_call)
      targets, tmask = pad(tgts, lc, 0, rows=per_call)
      start = np.ones(per_call, np.int32)
      start[:len(starts)] = starts
      total, count = self._score(self.params, ids, mask, start, targets, tmask)
      total, count = np.asarray(total), np.asarray(count)
      s = total if score == 'sum' else total / np.maximum(count, 1)
      r = 0
      for _, cands in group:
        results.append(s[r:r + len(cands)])
        r += len(cands)
    return results


# ------------------------------------------------------------------------------------------------
# Prompts.


@dataclasses.dataclass
class Prompter:
  """Builds prompts as token ids: demonstrations truncated to fit `max_len`.

  Each piece is tokenized on its own and the ids concatenated, so a demonstration's tokens
  are the same in every prompt it appears in.
  """
  tokenizer: object
  labels: Sequence[str]
  verbalizers: Sequence[str]
  max_len: int
  input_prefix: str = 'Text: '
  output_prefix: str = '\nTopic:'
  separator: str = '\n\n'
  demo_tokens: int = 48    # at most this many tokens of each demonstration's text
  query_tokens: int = 32   # ... and of the test input's
  min_demo_tokens: int = 4  # below this, the earliest demonstrations are dropped instead
  bos: bool = False

  def __post_init__(self):
    enc = self.tokenizer.encode
    self._pre, self._out, self._sep = enc(self.input_prefix), enc(self.output_prefix), enc(
        self.separator)
    self.candidates = [enc(' ' + v) for v in self.verbalizers]
    self._bos = [self.tokenizer.eos_id] if self.bos and self.tokenizer.eos_id is not None else []
    self._cache = {}
    self.label_index = {l: i for i, l in enumerate(self.labels)}

  def text_ids(self, text: str) -> list[int]:
    if text not in self._cache:
      self._cache[text] = self.tokenizer.encode(text)
    return self._cache[text]

  def warm(self, texts):
    todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
    for t, ids in zip(todo, self.tokenizer.encode_batch(todo) if todo else []):
      self._cache[t] = ids

  def input_ids(self, text: str):
    """(ids, weights) of the bare input `Text: <text>` (query budget), weights on the text:
    what the embeddings and the gradients see."""
    t = self.text_ids(text)[:self.query_tokens]
    ids = self._bos + self._pre + t
    return ids, [0] * (len(ids) - len(t)) + [1] * len(t)

  def demo_ids(self, text: str, label: str, budget: Optional[int] = None) -> list[int]:
    budget = self.demo_tokens if budget is None else budget
    return (self._pre + self.text_ids(text)[:budget] + self._out
            + self.candidates[self.label_index[label]] + self._sep)

  def prompt(self, demos: Sequence[tuple[str, str]], query: str):
    """(prompt ids, number of demonstrations kept): demonstrations then the query.

    What `max_len` leaves after the template and the longest label is shared out: each
    demonstration's text gets an equal share (at most `demo_tokens`, the query counting as one
    more share), the query text what is left (at most `query_tokens`). When a share would fall
    below `min_demo_tokens`, the demonstrations furthest from the query are dropped.
    """
    room = (self.max_len - len(self._bos) - len(self._pre) - len(self._out)
            - max(len(c) for c in self.candidates))
    if room < 1:
      raise ValueError(f'max_len={self.max_len} leaves no room for the query text.')
    demos, budget = list(demos), 0
    while demos:
      fixed = sum(len(self.demo_ids('', l, 0)) for _, l in demos)
      budget = min(self.demo_tokens, (room - fixed) // (len(demos) + 1))
      if budget >= self.min_demo_tokens:
        break
      demos = demos[1:]  # drop the one furthest from the query
    ids = list(self._bos)
    for text, label in demos:
      ids += self.demo_ids(text, label, budget)
    left = self.max_len - len(ids) - len(self._pre) - len(self._out) - max(
        len(c) for c in self.candidates)
    q = self._pre + self.text_ids(query)[:min(self.query_tokens, left)] + self._out
    return ids + q, len(demos)


# ------------------------------------------------------------------------------------------------
# Features and evaluation.


def compute_features(lm: LM, prompter: Prompter, pool: Sequence[dict], queries: Sequence[dict],
                     strategies: Sequence[str], gradient_params: str = 'last',
                     gradient_dim: int = 0, seed: int = 0) -> Features:
  """What `strategies` need: embeddings, demonstration losses, per-example gradients."""
  f = Features(num_pool=len(pool))
  pool_in = [prompter.input_ids(e['text']) for e in pool]
  query_in = [prompter.input_ids(e['text']) for e in queries]
  if {'similarity', 'diversity'} & set(strategies):
    f.pool_emb = lm.embed([s for s, _ in pool_in])
    f.query_emb = lm.embed([s for s, _ in query_in])
  if 'difficulty' in strategies:
    f.pool_loss = lm.mean_loss([prompter.demo_ids(e['text'], e['label']) for e in pool])
  if 'gradient' in strategies:
    kw = dict(which=gradient_params, dim=gradient_dim, seed=seed)
    f.pool_grad = lm.gradients([s for s, _ in pool_in], [w for _, w in pool_in], **kw)
    f.query_grad = lm.gradients([s for s, _ in query_in], [w for _, w in query_in], **kw)
  return f


def _sample(examples, n: int, seed: int):
  if n and n < len(examples):
    idx = np.sort(np.random.default_rng(seed).choice(len(examples), n, replace=False))
    return [examples[i] for i in idx]
  return list(examples)


def run_fewshot(lm: LM, prompter: Prompter, pool, test, fs, seed: int = 0) -> dict:
  """The strategy x k x run grid over `test` with demonstrations from `pool`; see `evaluate`."""
  strategies = [s for s in fs.strategies]
  for s in strategies:
    if s not in STRATEGIES:
      raise ValueError(f'fewshot.strategies: unknown {s!r}; choose from {STRATEGIES}.')
  ks = [int(k) for k in fs.ks]
  if any(k < 0 for k in ks):
    raise ValueError(f'fewshot.ks={tuple(ks)}: k must be >= 0.')
  runs = [(int(s), o) for s in fs.seeds for o in range(int(fs.orderings))]
  if not runs:
    raise ValueError('fewshot.seeds is empty or fewshot.orderings=0: nothing to run.')
  timing = {}
  t0 = time.time()
  prompter.warm([e['text'] for e in list(pool) + list(test)])
  feats = compute_features(lm, prompter, pool, test, [s for s in strategies if s != 'random'],
                           fs.gradient_params, int(fs.gradient_dim), seed)
  timing['features_s'] = time.time() - t0

  # Every (strategy, k, run, test example) prompt; k=0 is strategy-independent: one run.
  cells, requests, cache = [], [], {}
  for k in ks:
    for strategy in (['zero-shot'] if k == 0 else strategies):
      for r, (s, o) in enumerate(runs if k else runs[:1]):
        for qi, ex in enumerate(test):
          if k == 0:
            chosen = np.zeros(0, np.int64)
          elif strategy in QUERY_INDEPENDENT:
            key = (strategy, k, s)
            if key not in cache:
              cache[key] = select(strategy, k, feats, None, s, fs.difficulty)
            chosen = cache[key]
          else:
            chosen = select(strategy, k, feats, qi, s, fs.difficulty)
          order = [int(chosen[j]) for j in np.random.default_rng([s, o, qi, k]).permutation(
              len(chosen))]
          ids, kept = prompter.prompt([(pool[j]['text'], pool[j]['label']) for j in order],
                                      ex['text'])
          order = order[len(order) - kept:]
          cells.append((strategy, k, r, qi, order, len(ids)))
          requests.append((ids, prompter.candidates))
  t0 = time.time()
  scores = lm.score_candidates(requests, fs.score)
  timing['scoring_s'] = time.time() - t0
  timing['prompts'] = len(requests)

  gold = [prompter.label_index[e['label']] for e in test]
  correct, kept = {}, {}
  examples = [{'index': qi, 'text': e['text'], 'label': e['label'], 'selections': {}}
              for qi, e in enumerate(test)]
  for (strategy, k, r, qi, order, n_tok), sc in zip(cells, scores):
    pred = int(np.argmax(sc))
    correct.setdefault((strategy, k), {}).setdefault(r, []).append(pred == gold[qi])
    kept.setdefault((strategy, k), []).append(len(order))
    sel = examples[qi]['selections'].setdefault(strategy, {}).setdefault(str(k), [])
    sel.append({'run': r, 'seed': runs[r][0], 'ordering': runs[r][1], 'pool_indices': order,
                'prediction': prompter.labels[pred], 'correct': bool(pred == gold[qi]),
                'prompt_tokens': n_tok,
                'scores': [round(float(x), 4) for x in sc]})
  accuracy = {}
  for strategy in strategies:
    accuracy[strategy] = {}
    for k in ks:
      per_run = correct[('zero-shot', 0) if k == 0 else (strategy, k)]
      accs = [float(np.mean(v)) for _, v in sorted(per_run.items())]
      accuracy[strategy][str(k)] = {
          'mean': float(np.mean(accs)), 'std': float(np.std(accs)), 'runs': accs,
          'demos_in_prompt': float(np.mean(kept[('zero-shot', 0) if k == 0 else (strategy, k)]))}
  counts = np.bincount(gold, minlength=len(prompter.labels))
  return {
      'accuracy': accuracy,
      'majority_baseline': float(counts.max() / max(len(gold), 1)),
      'strategies': strategies, 'ks': ks, 'runs': len(runs), 'seeds': [int(s) for s in fs.seeds],
      'orderings': int(fs.orderings), 'labels': list(prompter.labels),
      'verbalizers': list(prompter.verbalizers), 'score': fs.score,
      'difficulty': fs.difficulty, 'gradient_params': fs.gradient_params,
      'gradient_dim': int(fs.gradient_dim), 'max_len': prompter.max_len,
      'num_test': len(test), 'pool_size': len(pool), 'timing': timing,
      'pool': [{'index': i, 'label': e['label'], 'text': e['text']} for i, e in enumerate(pool)],
      'examples': examples,
  }


def evaluate(config, checkpoint: str, output: Optional[str] = None) -> dict:
  """Few-shot accuracy of the causal LM at `checkpoint` per strategy and k (configs/fewshot.py).

  Writes the JSON result (default CHECKPOINT/fewshot_results.json, or `config.output`) and
  returns it; `format_table(result)` renders the strategy x k table.
  """
  # pylint: disable=g-import-not-at-top
  from lm import pretrained
  from lm import sharding
  from lm.tasks import data as task_data
  fs = config.fewshot
  if config.get('task', 'classification') != 'classification':
    raise ValueError(f"task={config.task!r}: few-shot evaluation covers 'classification'.")
  devices = jax.devices()[:max(1, int(config.get('num_devices', 1)))]
  mesh = sharding.make_mesh((-1, 1, 1), devices=devices)
  pre = pretrained.load(checkpoint, mesh)
  if pre.kind != 'decoder':
    raise ValueError(f'{checkpoint} holds an {pre.kind}: few-shot prompting needs a causal LM '
                     '(train.py --config=configs/gpt_base.py, or an HF GPT-2 directory).')
  if pre.tokenizer is None:
    raise ValueError(f'{checkpoint} has no tokenizer (tokenizer.json or vocab.json).')
  tok = pre.tokenizer
  max_len = int(fs.max_len) or pre.cfg.max_len
  if not int(fs.max_len) and pre.config is not None and 'data' in pre.config:
    max_len = min(max_len, int(pre.config.data.get('seq_len', max_len)))  # positions trained
  max_len = min(max_len, pre.cfg.max_len)

  pool_all, _ = task_data.load_examples('classification', config.data, 'train')
  test_all, _ = task_data.load_examples('classification', config.data, 'validation')
  if not pool_all or not test_all:
    raise ValueError('few-shot evaluation needs both a train (pool) and a validation split.')
  pool = _sample(pool_all, int(fs.pool_size), config.seed)
  test = _sample(test_all, int(fs.num_test), config.seed + 1)
  labels = list(config.data.labels) or sorted({e['label'] for e in pool_all + test_all})
  unknown = {e['label'] for e in pool + test} - set(labels)
  if unknown:
    raise ValueError(f'labels {sorted(unknown)} are not in data.labels={tuple(labels)}.')
  verbal = dict(fs.verbalizers) if fs.verbalizers else {}
  prompter = Prompter(tok, labels, [verbal.get(l, l) for l in labels], max_len,
                      input_prefix=fs.input_prefix, output_prefix=fs.output_prefix,
                      separator=fs.separator, demo_tokens=int(fs.demo_tokens),
                      query_tokens=int(fs.query_tokens), bos=bool(fs.bos))
  pad_id = tok.pad_id if tok.pad_id is not None else (tok.eos_id or 0)
  with sharding.use(mesh):
    lm = LM(pre.model, pre.params, pad_id, max_len, int(fs.batch_size))
    result = run_fewshot(lm, prompter, pool, test, fs, config.seed)
  result = {'checkpoint': os.path.abspath(checkpoint), 'step': pre.step,
            'data_source': config.data.source, **result}
  output = output or config.get('output') or os.path.join(checkpoint, 'fewshot_results.json')
  from lm import metrics  # pylint: disable=g-import-not-at-top
  result['output'] = os.path.abspath(output)
  metrics.write_json(output, result)
  return result


def format_table(result: dict) -> str:
  """Strategies x k: accuracy mean ± std over runs."""
  ks = result['ks']
  cells = [[f"{result['accuracy'][s][str(k)]['mean']:.3f} ± "
            f"{result['accuracy'][s][str(k)]['std']:.3f}" for k in ks]
           for s in result['strategies']]
  heads = ['strategy'] + [f'k={k}' for k in ks]
  w = [max(len(heads[0]), *(len(s) for s in result['strategies']))]
  w += [max(len(heads[i + 1]), *(len(c[i]) for c in cells)) for i in range(len(ks))]
  line = '+' + '+'.join('-' * (x + 2) for x in w) + '+'
  row = lambda vals: '| ' + ' | '.join(f'{v:<{w[0]}}' if i == 0 else f'{v:>{w[i]}}'
                                       for i, v in enumerate(vals)) + ' |'
  out = [f"few-shot accuracy, mean ± std over {result['runs']} run(s) (seeds x orderings; "
         f"k=0 is one zero-shot run): {result['num_test']} test examples, pool "
         f"{result['pool_size']}, score = {result['score']} label log-prob",
         line, row(heads), line]
  out += [row([s] + c) for s, c in zip(result['strategies'], cells)]
  short = []
  for k in ks:
    got = min(result['accuracy'][s][str(k)].get('demos_in_prompt', k) for s in result['strategies'])
    if got < k:
      short.append(f'k={k}: {got:.1f}')
  out.append(line)
  if short:
    out.append(f"demonstrations that fit max_len={result['max_len']} (fewest, mean over prompts): "
               + ', '.join(short))
  out += [f"majority-class baseline {result['majority_baseline']:.3f}; "
          f"{len(result['labels'])} labels: {', '.join(result['labels'])}"]
  return '\n'.join(out)


def main(argv):
  """python -m lm.icl --config=configs/fewshot.py --checkpoint=WORKDIR (same as eval.py's)."""
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  result = evaluate(flags.FLAGS.config, flags.FLAGS.checkpoint, flags.FLAGS.output)
  print(format_table(result))
  print(f"wrote {result['output']}")


if __name__ == '__main__':
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from lm import cli  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file('config', None, 'configs/fewshot.py', lock_config=True)
  flags.DEFINE_string('checkpoint', None, 'train.py workdir or HF GPT-2 directory.')
  flags.DEFINE_string('output', None, 'JSON result file (default CHECKPOINT/fewshot_results.json).')
  flags.mark_flags_as_required(['config', 'checkpoint'])
  cli.run(main)
