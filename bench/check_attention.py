"""Fused attention on this machine's accelerator vs the einsum reference: forward logits and
parameter gradients of a small GPT, bf16, causal, with and without packed-document masks
(segment ids), and with grouped-query heads.

  python bench/check_attention.py --impl=cudnn          # on a GPU; prints relative errors
  python bench/check_attention.py --impl=cudnn,flash    # also the Pallas (Triton) kernel
  python bench/check_attention.py --impl=flash --batch=2 --seq=64   # CPU: Pallas interpret mode

'flash' is lm/models/kernels.py's GPU kernel: compiled on a GPU, Pallas's interpret mode on CPU
(the kernel body as plain JAX ops: checks the wiring, not the compiled kernel). bf16 operands land
between 1e-3 and 1e-2 relative error; more means a wrong kernel.
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
  p.add_argument('--impl', default='cudnn', help="comma list of 'cudnn', 'flash', 'xla', ...")
  p.add_argument('--tol', type=float, default=2e-2)
  p.add_argument('--batch', type=int, default=4)
  p.add_argument('--seq', type=int, default=256)
  a = p.parse_args()
  B, T = a.batch, a.seq
  base = M.ModelConfig(
    vocab_size=512,
    hidden_size=256,
    num_layers=2,
    num_heads=4,
    mlp_dim=1024,
    max_len=T,
    type_vocab_size=0,
    pre_ln=True,
    activation='gelu_tanh',
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
    dtype='bfloat16',
  )
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(0, 512, (B, T)), jnp.int32)
  seg = jnp.asarray(1 + (np.arange(T)[None] >= rng.integers(T // 8, T, (B, 1))), jnp.int32)
  cases = (
    ('causal', {}, {}),
    ('causal+segments', {'segment_ids': seg}, {}),
    ('causal+seg, 2 kv heads', {'segment_ids': seg}, {'num_kv_heads': 2}),
  )
  worst = 0.0
  impls = [x for x in a.impl.split(',') if x]
  for name, kwargs, shape in cases:
    cfg = dataclasses.replace(base, **shape)
    params = M.Decoder(cfg).init(jax.random.PRNGKey(0), ids)['params']
    out = {}
    for impl in ['einsum', *impls]:
      model = M.Decoder(dataclasses.replace(cfg, attention_impl=impl))
      loss = lambda p, m=model: jnp.mean(
        jax.nn.logsumexp(m.apply({'params': p}, ids, **kwargs), -1)
      )
      logits = jax.jit(lambda p, m=model: m.apply({'params': p}, ids, **kwargs))(params)
      grads = jax.jit(jax.grad(loss))(params)
      out[impl] = (logits, grads)
    for impl in impls:
      e_f, e_g = rel(out[impl][0], out['einsum'][0]), rel(out[impl][1], out['einsum'][1])
      worst = max(worst, e_f, e_g)
      print(f'{impl} vs einsum, {name:<22}: logits rel err {e_f:.2e}, grads rel err {e_g:.2e}')
  mode = ' (Pallas interpret mode)' if 'flash' in impls and jax.default_backend() == 'cpu' else ''
  print(
    f'attention check {"PASSED" if worst < a.tol else "FAILED"} (worst {worst:.2e}, tol {a.tol:g}) '
    f'for {",".join(impls)} on {jax.devices()[0].device_kind}{mode}, batch {B} x {T}'
  )
  if worst >= a.tol:
    raise SystemExit(1)


if __name__ == '__main__':
  main()
