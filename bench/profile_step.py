r"""Where our CPU train step's time goes, per family, against the XLA float32 matmul ceiling.

  python bench/profile_step.py                       # bert, gpt, llama at train_throughput's
                                                     # default size (d256 L4 seq128 batch16)
  python bench/profile_step.py --models=llama --repeats=7

The step is `lm.objectives.make_train_step` exactly as bench/train_throughput.py builds it. XLA's
CPU runtime runs thunks concurrently and its Eigen dots asynchronously, so a jax.profiler trace
charges a dot's time to whatever thunk waits behind it (a 2 MB broadcast reads 0.7 s there):
this script times compiled sub-pieces instead, all interleaved with the ceiling in one process,
each the fastest of --repeats blocks, and subtracts:

  optimizer  = clip + AdamW + apply_updates, jitted alone with the state donated; beside it
               step - grad (grad = jit(grad(loss)), which also allocates a fresh gradient tree
               the step does not: this difference reads low, even negative)
  loss head  = grad - body              (body = grad of <hidden, g> w.r.t. params)
  embedding  = body - L * block         (gather + its scatter-add gradient, final norm)
  per block  = GEMMs + attention core + rest, where
    GEMMs          = the block's dense projections (q, k, v, o, MLP), each timed standalone in
                     its three forms (y = xW, dx = dy W^T, dW = x^T dy) at the step's shapes;
    attention core = the model's `dot_product_attention` fwd + bwd (scores, mask, softmax, PV);
    rest           = block - GEMMs - attention core: norms, activation, RoPE, residuals, bias.
  and for GPT/Llama's fused chunked cross-entropy the three vocab GEMMs standalone.

Printed: one table per family (ms per step, share of the step) and a table of every GEMM shape
with its GFLOP/s and % of the ceiling; the step's model-FLOPs MFU as train_throughput counts it,
and the MFU the step would reach if it were only its GEMMs and attention cores at their
standalone speeds (the bound XLA's own matmuls set). Subtracted rows carry the noise of both
terms: on a loaded machine a small one can come out negative.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_throughput as tt  # noqa: E402


def timer(jax, f, *args):
  """k -> seconds for k calls of the jitted f(*args), synchronised."""

  def run(k):
    t0 = time.perf_counter()
    for _ in range(k):
      out = f(*args)
    jax.block_until_ready(out)
    return time.perf_counter() - t0

  return run


def interleaved(pieces, repeats, steps):
  """{name: (fn, k-multiplier)} -> {name: fastest block's seconds per call}, alternating order.
  The fastest, not the median: on a shared machine bursts of load only ever add time, and the
  subtractions below need every piece measured as free of them as it can be."""
  times = {n: [] for n in pieces}
  for n, (fn, _) in pieces.items():
    fn(1)  # compile + warm
  names = list(pieces)
  for i in range(repeats):
    for n in names if i % 2 == 0 else names[::-1]:
      k = steps * pieces[n][1]
      times[n].append(pieces[n][0](k) / k)
  return {n: min(t) for n, t in times.items()}, times


def gemm_pieces(jax, jnp, shapes):
  """{(M, K, N): [fwd, dx, dw]} standalone float32 GEMMs: x[M,K] W[K,N]; dy W^T; x^T dy."""
  out = {}
  key = jax.random.PRNGKey(0)
  for m, k, n in shapes:
    x = jax.random.normal(key, (m, k), jnp.float32)
    w = jax.random.normal(key, (k, n), jnp.float32)
    dy = jax.random.normal(key, (m, n), jnp.float32)
    fwd = jax.jit(lambda a, b: a @ b)
    dx = jax.jit(lambda g, b: g @ b.T)
    dw = jax.jit(lambda a, g: a.T @ g)
    out[(m, k, n)] = [timer(jax, fwd, x, w), timer(jax, dx, dy, w), timer(jax, dw, x, dy)]
  return out


def family(kind, a, jax, jnp, log):
  import flax.linen as nn
  import optax

  from lm import objectives, optim, sharding
  from lm.models import layers

  size = tt.SIZES[a.config]
  d, L, H, m, T, B = size
  V = tt.VOCAB[kind]
  ns = argparse.Namespace(
    **{
      **vars(tt.parse_args([])),
      'loss_chunk': str(a.loss_chunk),
      'attention_impl': 'einsum',
      'doc_mask': '1',
      'scan_layers': '0',
    }
  )
  runner = tt.our_runner(kind, size, ns, jax, log)
  config = tt.our_config(kind, size, ns)
  cfg = objectives.model_config(config, V)
  mesh = sharding.make_mesh(config.mesh_shape)
  model = objectives.make_model(config, V)
  copy = lambda: jax.tree.map(jnp.copy, runner.holder['state'].params)  # the step donates its own
  params = copy()
  nb = tt.synthetic_batch(kind, B, T, V)
  batch = sharding.shard_batch(nb, mesh)
  norms = objectives.normalizers(config.objective, batch)
  chunk = config.train.loss_chunk if kind != 'bert' else 0

  def loss(p):
    sums = objectives.loss_sums(config.objective, model, p, batch, None, True, chunk)
    return objectives.total_loss(sums, norms)

  grad = jax.jit(jax.grad(loss))

  # the optimizer alone: clip + AdamW + apply, state donated as the step donates it
  tx = optim.make(config.train)
  opt = {'p': copy(), 's': tx.init(params)}
  g0 = jax.tree.map(jnp.ones_like, params)

  def update(g, s, p):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  update = jax.jit(update, donate_argnums=(1, 2))

  def run_opt(k):
    t0 = time.perf_counter()
    for _ in range(k):
      opt['p'], opt['s'] = update(g0, opt['s'], opt['p'])
    jax.block_until_ready(opt['p'])
    return time.perf_counter() - t0

  def hidden(p):
    if kind == 'bert':
      h, _ = model.apply(
        {'params': p},
        batch['input_ids'],
        batch['token_type_ids'],
        batch['attention_mask'],
        True,
        method='encode',
      )
      return h
    return model.apply(
      {'params': p},
      batch['input_ids'],
      positions=batch['positions'],
      segment_ids=batch['segment_ids'],
      deterministic=True,
      method='hidden',
    )

  g_h = jax.random.normal(jax.random.PRNGKey(3), (B, T, d), jnp.float32)
  body = jax.jit(jax.grad(lambda p: jnp.vdot(hidden(p), g_h)))

  # one block, its attention core
  x = jax.random.normal(jax.random.PRNGKey(1), (B, T, d), jnp.float32)
  if kind == 'bert':
    mask = layers.make_mask(batch['attention_mask'])
    pos = jnp.broadcast_to(jnp.arange(T), (B, T))
  else:
    mask = layers.make_mask(None, batch['segment_ids'])
    pos = batch['positions']
  causal = kind != 'bert'
  block = layers.Block(cfg, causal)
  bparams = block.init(jax.random.PRNGKey(2), x, mask, pos, True)['params']
  bparams = nn.unbox(bparams)
  block_grad = jax.jit(
    jax.grad(
      lambda p, x: jnp.vdot(block.apply({'params': p}, x, mask, pos, True), g_h), argnums=(0, 1)
    )
  )
  h, kv, dh = cfg.num_heads, cfg.kv_heads, cfg.head_dim
  q = jax.random.normal(jax.random.PRNGKey(4), (B, T, h, dh), jnp.float32)
  k_ = jax.random.normal(jax.random.PRNGKey(5), (B, T, kv, dh), jnp.float32)
  v_ = jax.random.normal(jax.random.PRNGKey(6), (B, T, kv, dh), jnp.float32)
  g_o = jax.random.normal(jax.random.PRNGKey(7), (B, T, h, dh), jnp.float32)

  def attn_loss(q, k, v):
    o = layers.dot_product_attention(q, k, v, mask, cfg, causal=causal)
    return jnp.vdot(o, g_o)

  attn_grad = jax.jit(jax.grad(attn_loss, argnums=(0, 1, 2)))

  # the step's GEMMs: (M, K, N) and how many per block / per step
  M = B * T
  mlp = cfg.mlp_dim
  block_gemms = [(M, d, h * dh)]  # q
  block_gemms += [(M, d, kv * dh)] * 2  # k, v
  block_gemms += [(M, h * dh, d)]  # out
  if cfg.mlp == 'swiglu':
    block_gemms += [(M, d, mlp)] * 2 + [(M, mlp, d)]
  else:
    block_gemms += [(M, d, mlp), (M, mlp, d)]
  Vp = cfg.vocab_size
  head_gemms = []
  if kind == 'bert':
    P = int(nb['masked_positions'].shape[1]) * B
    head_gemms = [(P, d, d), (P, d, Vp)]
  else:
    c = min(chunk or M, M)
    head_gemms = [(c, d, Vp)] * (M // c)
  shapes = sorted(set(block_gemms + head_gemms))
  gemms = gemm_pieces(jax, jnp, shapes)

  pieces = {
    'step': (runner.fn, 1),
    'grad': (timer(jax, grad, params), 1),
    'optimizer': (run_opt, 2),
    'body': (timer(jax, body, params), 1),
    'block': (timer(jax, block_grad, bparams, x), 2),
    'attention core': (timer(jax, attn_grad, q, k_, v_), 4),
  }
  mm = tt.matmul_runner(jax, jnp, 2048, jnp.float32)
  pieces['ceiling'] = (mm.fn, 4)
  for s, fs in gemms.items():
    for i, f in enumerate(fs):
      pieces[('gemm', s, i)] = (f, 4)
  t, _ = interleaved(pieces, a.repeats, a.steps)
  ceil = mm.flops / t['ceiling'] / 1e9
  gemm_t = {s: sum(t[('gemm', s, i)] for i in range(3)) for s in shapes}
  gemm_rate = {s: 3 * 2 * s[0] * s[1] * s[2] / gemm_t[s] / 1e9 for s in shapes}
  form_rate = {
    s: [2 * s[0] * s[1] * s[2] / t[('gemm', s, i)] / 1e9 for i in range(3)] for s in shapes
  }
  blk_gemm = sum(gemm_t[s] for s in block_gemms)
  head_gemm = sum(gemm_t[s] for s in head_gemms)
  step = t['step']
  rows = [
    ('optimizer: clip + AdamW update, standalone', t['optimizer']),
    ('  step - grad (optimizer + metrics - grad output alloc.)', step - t['grad']),
    ('loss head: all (grad - body)', t['grad'] - t['body']),
    ('  of which vocab/MLM GEMMs (standalone)', head_gemm),
    ('  of which the rest (softmax-CE passes, gathers, NSP)', t['grad'] - t['body'] - head_gemm),
    ('embedding + final norm (body - L x block)', t['body'] - L * t['block']),
    (f'{L} x block fwd+bwd', L * t['block']),
    ('  of which dense GEMMs (standalone)', L * blk_gemm),
    ('  of which attention core (scores, mask, softmax, PV)', L * t['attention core']),
    (
      '  of which the rest (norms, activation, RoPE, residuals)',
      L * (t['block'] - blk_gemm - t['attention core']),
    ),
  ]
  flops = runner.flops
  return dict(
    kind=kind,
    step=step,
    ceil=ceil,
    rows=rows,
    mfu=flops / step / 1e9 / ceil,
    flops=flops,
    attn=t['attention core'],
    gemm_rate=gemm_rate,
    form_rate=form_rate,
    gemm_t=gemm_t,
    block_gemms=block_gemms,
    head_gemms=head_gemms,
    L=L,
  )


def forms(r, s):
  return ' / '.join(f'{x / r["ceil"]:.0%}' for x in r['form_rate'][s])


def main(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument('--models', default='bert,gpt,llama')
  p.add_argument('--config', default='small', choices=sorted(tt.SIZES))
  p.add_argument('--loss_chunk', type=int, default=1024, help='GPT/Llama fused CE chunk')
  p.add_argument('--repeats', type=int, default=7)
  p.add_argument('--steps', type=int, default=2, help='calls per timed block (x4 for pieces)')
  a = p.parse_args(argv)
  import jax
  import jax.numpy as jnp

  jax.config.update('jax_enable_compilation_cache', False)
  log = lambda s: print(s, file=sys.stderr, flush=True)
  load = os.getloadavg()
  print(f'# profile_step  ({time.strftime("%Y-%m-%d %H:%M")} UTC)')
  print(
    f'jax {jax.__version__}, cpus={os.cpu_count()}, loadavg at start '
    f'{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; command: python {" ".join(sys.argv)}'
  )
  d, L, H, m, T, B = tt.SIZES[a.config]
  print(
    f'size {a.config}: d={d} L={L} heads={H} mlp={m} seq={T} batch={B}; float32; '
    f'{a.repeats} interleaved blocks per piece, the fastest\n'
  )
  for kind in a.models.split(','):
    log(f'[{kind}] ...')
    r = family(kind, a, jax, jnp, log)
    print(
      f'## {kind}: step {r["step"] * 1e3:.0f} ms, MFU {r["mfu"]:.1%} of the interleaved '
      f'float32 ceiling {r["ceil"]:.0f} GFLOP/s'
    )
    print(f'| {"part":<58} | {"ms/step":>8} | {"share":>6} |')
    print(f'|{"-" * 60}|{"-" * 10}|{"-" * 8}|')
    for name, s in r['rows']:
      print(f'| {name:<58} | {s * 1e3:8.1f} | {s / r["step"]:6.1%} |')
    print(f'| {"step":<58} | {r["step"] * 1e3:8.1f} | {1:6.1%} |')
    print()
    print(
      f'| {"GEMM M x K x N (fwd+dx+dW)":<28} | {"per step":>8} | {"ms/step":>8} | '
      f'{"GFLOP/s":>7} | {"% ceil":>6} | {"fwd / dx / dW % ceil":>20} |'
    )
    print(f'|{"-" * 30}|{"-" * 10}|{"-" * 10}|{"-" * 9}|{"-" * 8}|{"-" * 22}|')
    count = {}
    for s in r['block_gemms']:
      count[s] = count.get(s, 0) + r['L']
    for s in r['head_gemms']:
      count[s] = count.get(s, 0) + 1
    for s, n in sorted(count.items()):
      name = 'x'.join(map(str, s))
      print(
        f'| {name:<28} | {n:>8} | {n * r["gemm_t"][s] * 1e3:8.1f} | '
        f'{r["gemm_rate"][s]:7.1f} | {r["gemm_rate"][s] / r["ceil"]:6.1%} | '
        + f'{forms(r, s):>20} |'
      )
    tot = sum(n * r['gemm_t'][s] for s, n in count.items())
    fl = sum(n * 6 * s[0] * s[1] * s[2] for s, n in count.items())
    print(
      f'all GEMMs standalone: {tot * 1e3:.0f} ms = {tot / r["step"]:.1%} of the step, '
      f'{fl / tot / 1e9:.0f} GFLOP/s = {fl / tot / 1e9 / r["ceil"]:.1%} of the ceiling'
    )
    bound = r['flops'] / (tot + r['L'] * r['attn']) / 1e9 / r['ceil']
    print(
      f'MFU if the step were only these GEMMs and the attention cores at their standalone '
      f'speeds (no norms, activations, optimizer): {bound:.1%} (measured: {r["mfu"]:.1%})\n'
    )
  load = os.getloadavg()
  print(f'loadavg at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}')


if __name__ == '__main__':
  main()
