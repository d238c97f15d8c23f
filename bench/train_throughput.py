r"""Training throughput and model-FLOPs utilisation (MFU) of lm's BERT, GPT and Llama vs HF PyTorch.

  python bench/train_throughput.py            # full run, < ~6 min on a 2-core CPU
  python bench/train_throughput.py --quick    # < 1 min: fewer steps, no torch.compile
  python bench/train_throughput.py --models=llama   # Llama block vs HF LlamaForCausalLM
  bash bench/gpu_throughput.sh                # on a GPU: GPT-2 small/medium, bf16, cuDNN
  python bench/train_throughput.py --ceiling_only   # only the matmul ceiling (bench/gpu.sh)

What it measures, all in one process so the numbers compare as ratios:
  1. the XLA matmul ceiling (jit'd [n, n] @ [n, n], float32 and bfloat16), GFLOP/s;
  2. training tokens/s of OUR code path -- `lm.objectives.make_train_step` (the step train.py
     runs: AdamW with BERT's decay mask, global-norm clipping, metrics), state from
     `lm.trainer.create_state`, synthetic batches with the fields and shapes that
     `lm.data.pretrain.MLMBatcher` / `CLMBatcher` produce;
  3. the same for HF transformers PyTorch BertForPreTraining (MLM + NSP), GPT2LMHeadModel and
     LlamaForCausalLM, same sizes, same batch, torch.optim.AdamW, eager (and torch.compile);
     Llama: RMSNorm, SwiGLU of width mlp_llama = 2/3 * mlp rounded up to 64 (the dense MLP's
     parameter count), RoPE, --kv_heads grouped-query heads, untied head, no biases;
  4. compile time of our train step at 2 vs 24 layers, with and without `scan_layers`.
Runs of the different systems are interleaved (A B C D A B C D ...) and the median of the
repeats is reported, because the machine is shared and noisy.

FLOP convention (model FLOPs, identical for ours and HF, so MFU ratios = throughput ratios):
  per token:  6 * N_matmul  +  12 * L * T * d                         (PaLM appendix B)
     N_matmul = L * (4 d^2 + 2 d m): the non-embedding matmul weights (biases, LayerNorms,
     embeddings' gathers excluded); 12 L T d is attention's QK^T and PV, forward + backward,
     counted over the full T x T square even when causal (as PaLM / nanoGPT do).
  plus the vocabulary projection, 6 * d * V per *predicted* token (V = the tokenizer's vocab,
     30522 / 50257, not our padded multiple of 128):
     GPT: every token is predicted -> 6 d V per token.
     BERT: only masked positions are useful predictions -> 6 d V (+ 6 d^2 for the MLM
       transform dense) per masked token (weight-1 slot; 19 of 128 tokens per row here).
       HF computes logits at all 128 positions: that extra work is *not* counted as useful.
     NSP/pooler (2 * 6 d^2 per row) are counted; embeddings, softmax, LayerNorm, GELU and the
     optimizer are not.
  Llama: N_matmul = L * (2 d^2 + 2 d * kv_heads * head_dim + 3 d mlp_llama).
  MFU = model FLOPs per second / the measured XLA float32 (or bf16, by --dtype) matmul ceiling.
"""

import argparse
import itertools
import math
import os
import statistics
import sys
import time

SIZES = {  # name: (d, layers, heads, mlp, seq, batch)
  'small': (256, 4, 4, 1024, 128, 16),
  'tiny': (128, 2, 4, 512, 128, 16),
  'bert_base': (768, 12, 12, 3072, 128, 32),
  'gpt2_small': (768, 12, 12, 3072, 1024, 8),
  'gpt2_medium': (1024, 24, 16, 4096, 1024, 8),
}
VOCAB = {'bert': 30522, 'gpt': 50257, 'llama': 32000}


def parse_args(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument(
    '--config',
    default='small',
    choices=sorted(SIZES),
    help='model/batch size preset: small = d256 L4 h4 mlp1024 seq128 batch16',
  )
  for k in ('d', 'layers', 'heads', 'mlp', 'seq', 'batch'):
    p.add_argument(f'--{k}', type=int, default=None, help=f'override the preset {k}')
  p.add_argument('--models', default='bert,gpt', help='comma list of bert,gpt,llama')
  p.add_argument('--kv_heads', type=int, default=None, help='llama K/V heads (default heads / 2)')
  p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  p.add_argument(
    '--attention_impl',
    default='einsum',
    help='einsum | xla | cudnn; a comma list benchmarks each (interleaved)',
  )
  p.add_argument(
    '--loss_chunk',
    default='1024',
    help='GPT fused chunked cross-entropy chunk in tokens (0 = full logits); '
    'a comma list benchmarks each (interleaved)',
  )
  p.add_argument(
    '--doc_mask',
    default='1',
    help='GPT: 1 = attention stays inside each packed document (segment_ids, as '
    'CLMBatcher emits); 0 = plain causal over the window (GPT-2 style); '
    'a comma list benchmarks each (interleaved)',
  )
  p.add_argument('--scan_layers', default='0', help='0 | 1; a comma list benchmarks each')
  p.add_argument('--remat', default='none')
  p.add_argument('--dropout', type=float, default=0.0, help='dropout (both systems)')
  p.add_argument('--hf', default='eager,compile', help="comma list of eager,compile or 'none'")
  p.add_argument('--steps', type=int, default=None, help='steps per timed block')
  p.add_argument('--repeats', type=int, default=None, help='timed blocks per system (interleaved)')
  p.add_argument(
    '--compile_layers', default='2,24', help="layer counts for compile timing; '' skips"
  )
  p.add_argument('--compile_noscan', type=int, default=1, help='also time compile without scan')
  p.add_argument(
    '--matmul_n', type=int, default=None, help='matmul ceiling size (default 2048 CPU, 8192 GPU)'
  )
  p.add_argument(
    '--peak_tflops',
    type=float,
    default=0,
    help="the chip's datasheet peak for --dtype (H100 SXM bf16 dense: 989); adds an "
    'MFU column against it beside the one against the measured matmul ceiling',
  )
  p.add_argument(
    '--profile',
    default='',
    help='directory: after timing, trace 3 steps of the first of our runs there '
    '(jax.profiler, with a Perfetto .trace.json.gz)',
  )
  p.add_argument('--xla_flags', default='', help='appended to XLA_FLAGS before jax is imported')
  p.add_argument(
    '--threads', type=int, default=0, help='torch intra-op threads (0 = torch default)'
  )
  p.add_argument('--quick', action='store_true', help='< 1 min: fewer steps and no torch.compile')
  p.add_argument(
    '--ceiling_only',
    action='store_true',
    help='print the standalone matmul ceiling line (float32 and bfloat16) and exit '
    '(bench/gpu.sh: the MFU denominator of its train.py runs)',
  )
  a = p.parse_args(argv)
  if a.quick:
    a.steps = a.steps or 1
    a.repeats = a.repeats or 3
    if a.hf == 'eager,compile':
      a.hf = 'eager'
    if a.compile_layers == '2,24':
      a.compile_layers = '2,12'
    a.compile_noscan = 0
  a.steps = a.steps or 4
  a.repeats = a.repeats or 5
  return a


# ----------------------------------------------------------------------------- FLOPs


def llama_mlp(m):
  """The SwiGLU width with the parameters of a dense MLP of width m: 2/3 m, up to a multiple of 64."""
  return -(-2 * m // 3 // 64) * 64


def model_flops_per_step(kind, d, L, m, T, B, V, n_pred, kv_dim=None):
  """Useful training FLOPs for one step (see the module docstring)."""
  n_matmul = L * (4 * d * d + 2 * d * m)
  if kind == 'llama':
    n_matmul = L * (2 * d * d + 2 * d * kv_dim + 3 * d * llama_mlp(m))
  tokens = B * T
  body = tokens * (6 * n_matmul + 12 * L * T * d)
  if kind != 'bert':
    head = 6 * d * V * tokens
  else:
    head = n_pred * (6 * d * V + 6 * d * d) + B * 2 * 6 * d * d  # MLM at masked + pooler/NSP
  return body + head


FORMULA = (
  'model FLOPs/step = B*T*(6*L*(4d^2+2dm) + 12*L*T*d) + 6*d*V*P (+ BERT: 6*d^2*P '
  '+ 12*d^2*B); P = predicted tokens: GPT all B*T, BERT the masked ones; Llama: '
  '4d^2+2dm -> 2d^2 + 2d*kv_dim + 3d*mlp_llama'
)


# ----------------------------------------------------------------------------- timing


def median(xs):
  return statistics.median(xs) if xs else float('nan')


class Runner:
  """name, steps(n) -> seconds for n steps (synchronised), tokens per step, flops per step."""

  def __init__(self, name, fn, tokens, flops):
    self.name, self.fn, self.tokens, self.flops, self.times = name, fn, tokens, flops, []


def interleave(runners, steps, repeats, log):
  """Times each runner in alternating order. A baseline (HF) runner that fails -- a torch.compile
  error, out of memory -- is dropped with a log line rather than taking the others down.
  Returns the runners that finished."""

  def call(r, k):
    try:
      return r.fn(k)
    except Exception as e:  # pylint: disable=broad-except
      if not r.name.startswith('HF'):
        raise
      log(f'  {r.name} failed, dropped: {e!r}'[:400])
      runners.remove(r)
      return None

  runners = list(runners)
  for r in list(runners):
    r.times = []
    t0 = time.perf_counter()
    if call(r, 1) is not None:  # warm-up (first call compiles)
      r.first = time.perf_counter() - t0
      log(f'  warm-up {r.name}: {r.first:.1f} s')
  for i in range(repeats):
    order = runners if i % 2 == 0 else runners[::-1]  # alternate order: no fixed neighbour
    for r in list(order):
      k = steps if r.tokens else 4 * steps  # matmul runner: a few more, it is short
      t = call(r, k)
      if t is not None:
        r.times.append(t / k)
  for r in runners:
    r.step_s = median(r.times)
    r.tok_s = r.tokens / r.step_s
    r.spread = (max(r.times) - min(r.times)) / r.step_s if r.times else 0.0
  return runners


# ----------------------------------------------------------------------------- matmul ceiling


def matmul_ceiling(jax, jnp, n, dtype, iters):
  """Standalone ceiling, GFLOP/s: the median of `iters` single products after a warm-up."""
  r = matmul_runner(jax, jnp, n, dtype)
  r.fn(1)
  return r.flops / median([r.fn(1) for _ in range(iters)]) / 1e9


def matmul_runner(jax, jnp, n, dtype):
  """The ceiling as one more interleaved runner, so it is measured under the same load."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda x, y: x @ y)

  def run(k):
    t0 = time.perf_counter()
    for _ in range(k):
      c = f(a, b)
    c.block_until_ready()
    return time.perf_counter() - t0

  r = Runner(f'XLA matmul {n}^2 {jnp.dtype(dtype).name}', run, 0, 2 * n**3)
  r.params = 0
  return r


# ----------------------------------------------------------------------------- synthetic batches


def synthetic_batch(kind, B, T, V, seed=0, mlm_prob=0.15, nsp=True):
  """numpy batch with exactly the fields/dtypes/shapes of MLMBatcher / CLMBatcher rows."""
  import numpy as np

  rng = np.random.default_rng(seed)
  if kind == 'bert':
    P = max(1, math.ceil(T * mlm_prob))
    ids = rng.integers(5, V, (B, T)).astype(np.int32)
    ids[:, 0] = 2  # [CLS]
    len_a = T // 2 - 2
    ids[:, len_a + 1] = 3  # [SEP]
    ids[:, T - 1] = 3
    tt = np.zeros((B, T), np.int32)
    tt[:, len_a + 2 :] = 1
    cand = np.concatenate([np.arange(1, len_a + 1), np.arange(len_a + 2, T - 1)])
    num = min(P, max(1, int(math.floor(len(cand) * mlm_prob + 0.5))))
    pos = np.zeros((B, P), np.int32)
    mids = np.zeros((B, P), np.int32)
    w = np.zeros((B, P), np.float32)
    for b in range(B):
      p = np.sort(rng.choice(cand, num, replace=False))
      pos[b, :num], mids[b, :num], w[b, :num] = p, ids[b, p], 1
      ids[b, p] = 4  # [MASK]
    batch = dict(
      input_ids=ids,
      token_type_ids=tt,
      attention_mask=np.ones((B, T), np.int32),
      masked_positions=pos,
      masked_ids=mids,
      masked_weights=w,
    )
    if nsp:
      batch['nsp_labels'] = rng.integers(0, 2, (B,)).astype(np.int32)
    return batch
  window = rng.integers(0, V, (B, T + 1)).astype(np.int32)
  ends = rng.random((B, T)) < 1 / 400  # ~1 document boundary every 400 tokens
  seg = 1 + np.concatenate([np.zeros((B, 1), np.int64), np.cumsum(ends[:, :-1], 1)], 1)
  seg_start = np.concatenate([np.ones((B, 1), bool), ends[:, :-1]], 1)
  start_idx = np.maximum.accumulate(np.where(seg_start, np.arange(T), 0), axis=1)
  return dict(
    input_ids=window[:, :-1],
    targets=window[:, 1:],
    segment_ids=seg.astype(np.int32),
    positions=(np.arange(T) - start_idx).astype(np.int32),
    weights=(~ends).astype(np.float32),
  )


# ----------------------------------------------------------------------------- ours


def our_config(kind, size, a):
  from lm import defaults

  d, L, H, m, T, B = size
  c = defaults.pretraining()
  c.objective = 'mlm' if kind == 'bert' else 'clm'
  model = dict(
    hidden_size=d,
    num_layers=L,
    num_heads=H,
    mlp_dim=m,
    max_len=max(T, 128),
    dropout_rate=a.dropout,
    attention_dropout_rate=a.dropout,
    dtype=a.dtype,
    scan_layers=bool(int(a.scan_layers)),
    remat=a.remat,
  )
  if kind == 'gpt':
    model.update(type_vocab_size=0, pre_ln=True, activation='gelu_tanh', layer_norm_eps=1e-5)
  if kind == 'llama':  # configs/llama.py's block
    model.update(
      type_vocab_size=0,
      pre_ln=True,
      position='rope',
      norm='rmsnorm',
      mlp='swiglu',
      activation='silu',
      bias='none',
      tie_embeddings=False,
      num_kv_heads=kv_heads(a, H),
      mlp_dim=llama_mlp(m),
      layer_norm_eps=1e-5,
    )
  model['attention_impl'] = a.attention_impl
  c.model.update(model)
  c.data.update(seq_len=T, nsp=True)
  c.train.update(batch_size=B, steps=1000, warmup_steps=10, lr=1e-4)
  if kind != 'bert':
    c.train.loss_chunk = int(a.loss_chunk)
  return c


def kv_heads(a, heads):
  return a.kv_heads or max(1, heads // 2)


def _flops(kind, size, a, V, n_pred):
  d, L, H, m, T, B = size
  return model_flops_per_step(kind, d, L, m, T, B, V, n_pred, kv_heads(a, H) * (d // H))


def our_runner(kind, size, a, jax, log):
  from lm import objectives, optim, sharding, trainer

  d, L, H, m, T, B = size
  V = VOCAB[kind]
  config = our_config(kind, size, a)
  mesh = sharding.make_mesh(config.mesh_shape)
  model = objectives.make_model(config, V)
  tx = optim.make(config.train)
  state, state_sh = trainer.create_state(
    model, tx, mesh, config.seed, objectives.init_inputs(config)
  )
  step = objectives.make_train_step(config, model, tx, state_sh, mesh)
  nb = synthetic_batch(kind, B, T, V)
  if kind != 'bert' and not int(a.doc_mask):
    del nb['segment_ids']  # the model then masks causally only
  batch = sharding.shard_batch(nb, mesh)
  n_pred = int(nb['masked_weights'].sum()) if kind == 'bert' else B * T
  holder = {'state': state}

  def run(n):
    t0 = time.perf_counter()
    s = holder['state']
    for _ in range(n):
      s, metrics = step(s, batch)
    jax.block_until_ready((s, metrics))
    holder['state'], holder['metrics'] = s, metrics
    return time.perf_counter() - t0

  extra = f' chunk={config.train.loss_chunk} doc={int(a.doc_mask)}' if kind != 'bert' else ''
  scan = ' scan' if config.model.scan_layers else ''
  name = f'ours {kind} ({config.model.attention_impl}{scan}{extra})'
  r = Runner(name, run, B * T, _flops(kind, size, a, V, n_pred))
  r.params = trainer.param_count(state.params)
  r.holder = holder
  return r


def compile_time(kind, size, a, layers, scan, log):
  """Seconds to lower and compile our train step (abstract state: nothing allocated)."""
  import jax
  from lm import objectives, optim, sharding, trainer

  d, L, H, m, T, B = size
  size = (d, layers, H, m, T, B)
  a2 = argparse.Namespace(
    **{
      **vars(a),
      'scan_layers': int(scan),
      'attention_impl': a.attention_impl.split(',')[0],
      'loss_chunk': a.loss_chunk.split(',')[0],
    }
  )
  config = our_config(kind, size, a2)
  mesh = sharding.make_mesh(config.mesh_shape)
  model = objectives.make_model(config, VOCAB[kind])
  tx = optim.make(config.train)
  abstract = trainer.abstract_state(model, tx, mesh, objectives.init_inputs(config))
  state_sh = jax.tree.map(lambda x: x.sharding, abstract)
  step = objectives.make_train_step(config, model, tx, state_sh, mesh)
  jitted = getattr(step, '__wrapped__', step)
  nb = synthetic_batch(kind, B, T, VOCAB[kind])
  bsh = sharding.batch_sharding(mesh)
  abatch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=bsh) for k, v in nb.items()}
  with sharding.use(mesh):
    t0 = time.perf_counter()
    lowered = jitted.lower(abstract, abatch)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
  return t1 - t0, t2 - t1


# ----------------------------------------------------------------------------- HF PyTorch


def hf_runner(kind, size, a, mode, log):
  import numpy as np
  import torch
  import transformers

  d, L, H, m, T, B = size
  V = VOCAB[kind]
  dev = 'cuda' if torch.cuda.is_available() else 'cpu'
  torch.manual_seed(0)
  if kind == 'bert':
    cfg = transformers.BertConfig(
      vocab_size=V,
      hidden_size=d,
      num_hidden_layers=L,
      num_attention_heads=H,
      intermediate_size=m,
      max_position_embeddings=max(T, 128),
      hidden_dropout_prob=a.dropout,
      attention_probs_dropout_prob=a.dropout,
    )
    model = transformers.BertForPreTraining(cfg)
  elif kind == 'llama':
    cfg = transformers.LlamaConfig(
      vocab_size=V,
      hidden_size=d,
      intermediate_size=llama_mlp(m),
      num_hidden_layers=L,
      num_attention_heads=H,
      num_key_value_heads=kv_heads(a, H),
      max_position_embeddings=max(T, 128),
      rms_norm_eps=1e-5,
      attention_dropout=a.dropout,
    )
    model = transformers.LlamaForCausalLM(cfg)
  else:
    cfg = transformers.GPT2Config(
      vocab_size=V,
      n_embd=d,
      n_layer=L,
      n_head=H,
      n_inner=m,
      n_positions=max(T, 128),
      resid_pdrop=a.dropout,
      embd_pdrop=a.dropout,
      attn_pdrop=a.dropout,
    )
    model = transformers.GPT2LMHeadModel(cfg)
  tdtype = torch.bfloat16 if a.dtype == 'bfloat16' else torch.float32
  model = model.to(dev, tdtype).train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
  nb = synthetic_batch(kind, B, T, V)
  t = lambda x: torch.from_numpy(np.asarray(x, np.int64)).to(dev)
  if kind == 'bert':
    labels = np.full((B, T), -100, np.int64)
    for b in range(B):
      k = nb['masked_weights'][b] > 0
      labels[b, nb['masked_positions'][b][k]] = nb['masked_ids'][b][k]
    inputs = dict(
      input_ids=t(nb['input_ids']),
      token_type_ids=t(nb['token_type_ids']),
      attention_mask=t(nb['attention_mask']),
      labels=t(labels),
      next_sentence_label=t(nb['nsp_labels']),
    )
    n_pred = int(nb['masked_weights'].sum())
  else:
    inputs = dict(input_ids=t(nb['input_ids']), labels=t(nb['input_ids']), use_cache=False)
    n_pred = B * T
  fwd = torch.compile(model) if mode == 'compile' else model

  def one():
    opt.zero_grad(set_to_none=True)
    loss = fwd(**inputs).loss
    loss.backward()
    opt.step()
    return loss

  def run(n):
    t0 = time.perf_counter()
    for _ in range(n):
      loss = one()
    float(loss.detach())  # synchronise
    if dev == 'cuda':
      torch.cuda.synchronize()
    return time.perf_counter() - t0

  name = f'HF torch {kind} {mode}'
  r = Runner(name, run, B * T, _flops(kind, size, a, V, n_pred))
  r.params = sum(p.numel() for p in model.parameters())
  return r


# ----------------------------------------------------------------------------- main


def main(argv=None):
  a = parse_args(argv)
  if a.xla_flags:
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + a.xla_flags).strip()
  import jax
  import jax.numpy as jnp

  jax.config.update('jax_enable_compilation_cache', False)  # compile times must be real
  if a.threads:
    import torch

    torch.set_num_threads(a.threads)
  log = lambda s: print(s, file=sys.stderr, flush=True)
  t_start = time.perf_counter()

  d, L, H, m, T, B = SIZES[a.config]
  over = {k: getattr(a, k) for k in ('d', 'layers', 'heads', 'mlp', 'seq', 'batch')}
  d, L, H, m, T, B = [
    v if over[k] is None else over[k]
    for k, v in zip(('d', 'layers', 'heads', 'mlp', 'seq', 'batch'), (d, L, H, m, T, B))
  ]
  size = (d, L, H, m, T, B)
  kinds = [k for k in a.models.split(',') if k]
  hf_modes = [] if a.hf in ('', 'none') else a.hf.split(',')
  on_gpu = jax.default_backend() != 'cpu'

  lines = []
  out = lambda s='': (print(s, flush=True), lines.append(s))
  try:
    load = os.getloadavg()
  except OSError:
    load = (float('nan'),) * 3
  out(f'# lm training throughput  ({time.strftime("%Y-%m-%d %H:%M")})')
  out(
    f'device: {jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()}), '
    f'cpus={os.cpu_count()}, loadavg(1/5/15 min) at start = {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}'
  )
  out(f'jax {jax.__version__}; XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}')
  out('command: python ' + ' '.join(sys.argv))
  out(
    f'size: d={d} L={L} heads={H} mlp={m} seq={T} batch={B} vocab bert={VOCAB["bert"]} '
    f'gpt={VOCAB["gpt"]} llama={VOCAB["llama"]} (kv_heads={kv_heads(a, H)}, '
    f'mlp_llama={llama_mlp(m)}); dtype={a.dtype}; dropout={a.dropout}; AdamW; '
    f'{a.repeats} interleaved blocks x {a.steps} steps, median'
  )
  out()

  # 1. matmul ceiling
  n = a.matmul_n or (8192 if on_gpu else 2048)
  iters = 20 if on_gpu else (4 if a.quick else 8)
  ceil = {}
  for dt in ('float32', 'bfloat16'):
    ceil[dt] = matmul_ceiling(jax, jnp, n, getattr(jnp, dt), iters)
  out(
    f'XLA matmul ceiling ({n}x{n}): float32 {ceil["float32"]:.0f} GFLOP/s, '
    f'bfloat16 {ceil["bfloat16"]:.0f} GFLOP/s'
  )
  if a.ceiling_only:
    return
  ref = ceil[a.dtype]
  out('(standalone, before the runs; MFU uses the interleaved re-measurement below)')
  out(FORMULA)
  out(
    'ours gpt runs with config.train.loss_chunk = --loss_chunk (fused linear+CE, lm/losses.py); '
    '0 = full [N, V] logits. configs/gpt_base.py sets 1024, configs/gpt2.py 4096.'
  )
  out()

  # 2-3. throughput, interleaved per model kind
  results, ceil_interleaved = {}, []
  for kind in kinds:
    log(f'[{kind}] building ...')
    runners = []
    gpt_axes = lambda x: x.split(',') if kind != 'bert' else x.split(',')[:1]
    for scan, impl, chunk, doc in itertools.product(
      a.scan_layers.split(','),
      a.attention_impl.split(','),
      gpt_axes(a.loss_chunk),
      gpt_axes(a.doc_mask),
    ):
      v = argparse.Namespace(
        **{
          **vars(a),
          'attention_impl': impl,
          'loss_chunk': chunk,
          'doc_mask': doc,
          'scan_layers': scan,
        }
      )
      runners.append(our_runner(kind, size, v, jax, log))
    n_ours = len(runners)
    runners.append(matmul_runner(jax, jnp, n, getattr(jnp, a.dtype)))
    for mode in hf_modes:
      try:
        runners.append(hf_runner(kind, size, a, mode, log))
      except Exception as e:  # pylint: disable=broad-except
        log(f'  HF {kind} {mode} unavailable: {e!r}')
    runners = interleave(runners, a.steps, a.repeats, log)
    mm = [r for r in runners if r.name.startswith('XLA matmul')]
    ceil_interleaved.extend(2 * n**3 / t / 1e9 for r in mm for t in r.times)
    results[kind] = (runners[:n_ours], [r for r in runners[n_ours:] if r not in mm])
    for r in runners[:n_ours]:
      log(f'  {r.name}: loss after warm-up+timed steps {float(r.holder["metrics"]["loss"]):.3f}')

  if a.profile and kinds:
    r = results[kinds[0]][0][0]
    jax.profiler.start_trace(a.profile, create_perfetto_trace=True)
    r.fn(3)
    jax.profiler.stop_trace()
    log(f'  traced 3 steps of {r.name} into {a.profile}')

  if ceil_interleaved:
    ref = median(ceil_interleaved)
    out(
      f'{a.dtype} matmul ceiling re-measured interleaved with the training runs '
      f'(same load): median {ref:.0f} GFLOP/s over {len(ceil_interleaved)} blocks '
      f'(range {min(ceil_interleaved):.0f}-{max(ceil_interleaved):.0f}); MFU below is against it.'
    )
  peak = f' | {"MFU pk":>6}' if a.peak_tflops else ''
  if a.peak_tflops:
    out(f'MFU pk = against the datasheet peak --peak_tflops={a.peak_tflops:g} TFLOP/s.')
  hdr = (
    f'| {"run":<36} | {"params":>7} | {"step ms":>8} | {"spread":>6} | {"tokens/s":>9} | '
    f'{"TFLOP/step":>10} | {"GFLOP/s":>7} | {"MFU":>6}{peak} | {"1st step s":>10} |'
  )
  out(hdr)
  out('|' + '|'.join('-' * (len(c)) for c in hdr.split('|')[1:-1]) + '|')
  for kind in kinds:
    for r in results[kind][0] + results[kind][1]:
      gf = r.flops / r.step_s / 1e9
      out(
        f'| {r.name:<36} | {r.params / 1e6:6.1f}M | {r.step_s * 1e3:8.1f} | {r.spread:5.0%} | '
        f'{r.tok_s:9,.0f} | {r.flops / 1e12:10.4f} | {gf:7.1f} | {gf / ref:6.1%}'
        + (f' | {gf / 1e3 / a.peak_tflops:6.1%}' if a.peak_tflops else '')
        + f' | {r.first:10.1f} |'
      )
  out('(spread = (max-min)/median of the per-block step times; 1st step = compile + one step)')
  out()

  # 4. compile times
  layer_counts = [int(x) for x in a.compile_layers.split(',') if x]
  if layer_counts:
    ck = kinds[-1] if kinds else 'gpt'
    out(f'compile time of our {ck} train step (lower + XLA compile, seconds):')
    out(f'| {"layers":>6} | {"scan_layers=True":>18} | {"scan_layers=False":>18} |')
    out(f'|{"-" * 8}|{"-" * 20}|{"-" * 20}|')
    for nl in layer_counts:
      s = compile_time(ck, size, a, nl, True, log)
      cell_s = f'{s[0]:.1f} + {s[1]:.1f}'
      if a.compile_noscan:
        u = compile_time(ck, size, a, nl, False, log)
        cell_u = f'{u[0]:.1f} + {u[1]:.1f}'
      else:
        cell_u = 'skipped'
      out(f'| {nl:>6} | {cell_s:>18} | {cell_u:>18} |')
    out()

  # 5. ratios
  out('ratios, ours / HF PyTorch (tokens/s):')
  for kind in kinds:
    for ours in results[kind][0]:
      for r in results[kind][1]:
        out(f'  {ours.name:<36} / {r.name:<22} = {ours.tok_s / r.tok_s:5.2f}x')
  load = os.getloadavg()
  out(
    f'loadavg at end = {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; total {time.perf_counter() - t_start:.0f} s'
  )


if __name__ == '__main__':
  main()
