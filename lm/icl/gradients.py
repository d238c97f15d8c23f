"""Per-example gradients of the LM loss, for the 'gradient' strategy: a mixin of `scoring.LM`.

Kept apart from the forward-only scoring because it alone differentiates: which params count
('last' block or 'all'), jax.jit(jax.vmap(jax.grad(...))) over a batch, an optional count-sketch.
The host class provides model, params, num_layers, scan_layers, `_logprobs`, `_batched` and
`_jit`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


class GradientsMixin:
  """`gradients(seqs, weights)`: one flattened (or sketched) loss gradient per sequence."""

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

    params = traverse_util.unflatten_dict(
      {**traverse_util.flatten_dict(rest), **traverse_util.flatten_dict(selected)}
    )
    tok = self._logprobs(params, ids[None], mask[None])[0]
    w = weights[1:].astype(jnp.float32)
    return -(tok * w).sum() / jnp.maximum(w.sum(), 1.0)

  def grad_fn(self, which: str = 'last', dim: int = 0, seed: int = 0):
    """jit(vmap(grad(example_loss))) over the `which` params -> flattened [B, G], or
    count-sketched to [B, dim] (a fixed random bucket and sign per coordinate: inner products
    are preserved in expectation)."""
    cache = self.__dict__.setdefault('_grad_fns', {})
    key = (which, dim, seed)
    if key not in cache:
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

      cache[key] = self._jit(fn)
    return cache[key]

  def gradients(
    self, seqs, weights=None, which: str = 'last', dim: int = 0, seed: int = 0
  ) -> np.ndarray:
    """Per-example gradients of `mean_loss` w.r.t. the `which` params: [N, G] (G = dim if set)."""
    selected, rest = self.split_params(which)
    fn = self.grad_fn(which, dim, seed)
    weights = weights or [[0] + [1] * (len(s) - 1) for s in seqs]
    return self._batched(seqs, lambda ids, mask, w: fn(selected, rest, ids, mask, w), weights)
