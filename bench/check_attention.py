"""Fused attention on this machine's accelerator vs the einsum reference: forward logits and
parameter gradients of a small GPT, bf16, with and without packed-document masks.

  python bench/check_attention.py --impl=cudnn     # on a GPU; prints relative errors

bf16 operands land between 1e-3 and 1e-2 relative error; more means a wrong kernel.
"""

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lm import models as M


def rel(a, b):
  a, b = (
    jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(t)]) for t in (a, b)
  )
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--impl', default='cudnn')
  p.add_argument('--tol', type=float, default=2e-2)
  a = p.parse_args()
  base = M.ModelConfig(
    vocab_size=512,
    hidden_size=256,
    num_layers=2,
    num_heads=4,
    mlp_dim=1024,
    max_len=256,
    type_vocab_size=0,
    pre_ln=True,
    activation='gelu_tanh',
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
    dtype='bfloat16',
  )
  rng = np.random.default_rng(0)
  B, T = 4, 256
  ids = jnp.asarray(rng.integers(0, 512, (B, T)), jnp.int32)
  seg = jnp.asarray(1 + (np.arange(T)[None] >= rng.integers(32, T, (B, 1))), jnp.int32)
  params = M.Decoder(base).init(jax.random.PRNGKey(0), ids)['params']
  worst = 0.0
  for name, kwargs in (('causal', {}), ('causal+segments', {'segment_ids': seg})):
    out = {}
    for impl in ('einsum', a.impl):
      model = M.Decoder(dataclasses.replace(base, attention_impl=impl))
      loss = lambda p: jnp.mean(jax.nn.logsumexp(model.apply({'params': p}, ids, **kwargs), -1))
      logits = jax.jit(lambda p: model.apply({'params': p}, ids, **kwargs))(params)
      grads = jax.jit(jax.grad(loss))(params)
      out[impl] = (logits, grads)
    e_f, e_g = rel(out[a.impl][0], out['einsum'][0]), rel(out[a.impl][1], out['einsum'][1])
    worst = max(worst, e_f, e_g)
    print(f'{a.impl} vs einsum, {name:<16}: logits rel err {e_f:.2e}, grads rel err {e_g:.2e}')
  print(
    f'attention check {"PASSED" if worst < a.tol else "FAILED"} (worst {worst:.2e}, tol {a.tol:g}) '
    f'on {jax.devices()[0].device_kind}'
  )


if __name__ == '__main__':
  main()
