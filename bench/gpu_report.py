r"""bench/gpu.sh's helpers: the local corpus, train.py's MFU, the longest sequence that fits one
device, and the final summary table.

  python bench/gpu_report.py corpus DEST MB     # site-packages .py files, sorted, up to MB
  python bench/gpu_report.py mfu --workdir=W --ceiling=OUT/ceiling.txt --name=gpt2_small
  python bench/gpu_report.py longest --spec=gpt2.py:small --budget_gib=79 [--set=K=V ...]
  python bench/gpu_report.py summary OUT --phases=P   # the table of the phases' logs in OUT

mfu: train.py logs tokens/s per log interval (metrics.jsonl: `train/tokens_per_sec`, the tokens
of the interval's steps over its wall time, synchronised by the logged metrics). The first
interval includes the train step's compile (its clock starts before the first step); the
median of the others is the steady state. Model FLOPs per token, from the workdir's saved model
record (PaLM appendix B, as bench/train_throughput.py):
  6 * N_matmul + 12 * L * T * H * Dh + 6 * d * V
  N_matmul = L * (d * H * Dh + 2 * d * KV * Dh + H * Dh * d + (3 if SwiGLU else 2) * d * m)
(attention over the full T x T square even when causal; V the tokenizer's vocabulary, not the
padded embedding; remat's recompute not counted: MFU, not hardware FLOPs). MFU is against the
bf16 matmul ceiling that `train_throughput.py --ceiling_only` measured in the same invocation.

longest: bench/memory.py's compiled-step peak (`memory.step_peak`: XLA's memory analysis of the
step train.py runs, one row, scanned layers, the config's attention and remat) on this machine's
first device, at --fit_lengths; the quadratic through them is solved for --budget_gib, rounded
down to --step, and compiled lengths around it narrow the answer (at most --max_compiles more
compiles): the longest compiled length that fits and the shortest that does not. The budget is
--budget_gib, or the device allocator's limit (memory_stats' bytes_limit: the GPU's memory times
XLA_PYTHON_CLIENT_MEM_FRACTION, which bench/gpu.sh sets to 0.95 for this phase), with nothing
left over for the runtime.
"""

import argparse
import glob
import json
import os
import re
import shutil
import statistics
import sys
import sysconfig
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- corpus


def corpus(dest: str, mb: float) -> None:
  """Copies this interpreter's site-packages .py files, in sorted order, until `mb` MB."""
  src = sysconfig.get_paths()['purelib']
  files = []
  for root, dirs, names in os.walk(src):
    dirs[:] = [d for d in dirs if not d.startswith('.')]
    files += [os.path.join(root, f) for f in names if f.endswith('.py')]
  total, n, budget = 0, 0, mb * 2**20
  for path in sorted(files):
    if total >= budget:
      break
    target = os.path.join(dest, os.path.relpath(path, src))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(path, target)
    total, n = total + os.path.getsize(path), n + 1
  print(f'corpus: {n} .py files, {total / 2**20:.1f} MB of {src} in {dest}')


# ----------------------------------------------------------------------------- MFU


def ceiling_gflops(path: str, dtype: str = 'bfloat16') -> float:
  with open(path, encoding='utf-8') as f:
    m = re.search(rf'{dtype} ([\d.]+) GFLOP/s', f.read())
  if not m:
    raise ValueError(f'no {dtype} matmul ceiling in {path}')
  return float(m.group(1))


def flops_per_token(model: dict, seq_len: int, vocab: int) -> tuple:
  """(model FLOPs per trained token, N_matmul) of a saved model record (the module doc)."""
  d, L, h = model['hidden_size'], model['num_layers'], model['num_heads']
  kv, m = model['num_kv_heads'] or h, model['mlp_dim']
  dh = d // h
  mlp = 3 if model['mlp'] == 'swiglu' else 2
  n_matmul = L * (2 * d * h * dh + 2 * d * kv * dh + mlp * d * m)
  return 6 * n_matmul + 12 * L * seq_len * h * dh + 6 * d * vocab, n_matmul


def mfu(a) -> None:
  from lm import pretrained  # noqa: PLC0415
  import tokenizers  # noqa: PLC0415

  _, rec, config = pretrained.read_record(a.workdir)
  model = rec['model']
  vocab = tokenizers.Tokenizer.from_file(os.path.join(a.workdir, 'tokenizer.json'))
  vocab = vocab.get_vocab_size()
  with open(os.path.join(a.workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    rows = [json.loads(x) for x in f if x.strip()]
  rates = [(r['step'], r['train/tokens_per_sec']) for r in rows if 'train/tokens_per_sec' in r]
  if len(rates) < 2:
    raise ValueError(f'{a.workdir}: {len(rates)} logged intervals, need 2 (one past compile)')
  T, B = int(config.data.seq_len), int(config.train.batch_size)
  fpt, n_matmul = flops_per_token(model, T, vocab)
  ceil = ceiling_gflops(a.ceiling)
  steady = statistics.median(r for _, r in rates[1:])
  first_s = rates[0][0] * B * T / rates[0][1]
  steady_step_s = B * T / steady
  compile_s = first_s - rates[0][0] * steady_step_s
  n_params = n_matmul + model['hidden_size'] * vocab * (1 if model['tie_embeddings'] else 2)
  gflops = steady * fpt / 1e9
  print(
    f'{a.name}: d={model["hidden_size"]} L={model["num_layers"]} heads={model["num_heads"]} '
    f'kv={model["num_kv_heads"] or model["num_heads"]} mlp={model["mlp_dim"]} ({model["mlp"]}) '
    f'vocab={vocab} (tokenizer; model rows {model["vocab_size"]}), ~{n_params / 1e6:.0f}M '
    f'matmul+embedding params; batch {B} x {T}; dtype {model["dtype"]}, remat {model["remat"]}, '
    f'attention {model["attention_impl"]}, scan_layers {model["scan_layers"]}'
  )
  print(
    f'{a.name}: tokens/s per logged interval: '
    + ', '.join(f'step {s}: {r:,.0f}' for s, r in rates)
    + f' (the first holds the compile: ~{compile_s:.1f} s over the steady step time)'
  )
  print(
    f'{a.name}: model FLOPs/token {fpt / 1e9:.3f} G; steady {steady:,.0f} tokens/s = '
    f'{gflops / 1e3:.1f} TFLOP/s; bf16 matmul ceiling {ceil / 1e3:.1f} TFLOP/s'
  )
  print(
    f'RESULT {a.name} tokens_per_s={steady:.0f} step_ms={steady_step_s * 1e3:.1f} '
    f'mfu={gflops / ceil:.4f} compile_s={compile_s:.1f} final_loss={_last_loss(rows)}'
  )


def _last_loss(rows) -> str:
  losses = [r['train/loss'] for r in rows if 'train/loss' in r]
  return f'{losses[-1]:.3f}' if losses else 'nan'


# ----------------------------------------------------------------------------- longest


def _literal(v: str):
  import ast  # noqa: PLC0415

  try:
    return ast.literal_eval(v)
  except (ValueError, SyntaxError):
    return v


def longest(a) -> None:
  sys.path[:0] = [ROOT, os.path.join(ROOT, 'bench')]
  import memory  # noqa: PLC0415  (sets the CPU platform's device count only)
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from lm import sharding  # noqa: PLC0415

  config = memory.load_config(a.spec)
  for kv in a.set or []:
    key, _, value = kv.partition('=')
    *path, leaf = key.split('.')
    node = config
    for p in path:
      node = node[p]
    node[leaf] = _literal(value)
  config.model.scan_layers = True
  if a.attention_impl:
    config.model.attention_impl = a.attention_impl
  device = jax.devices()[0]
  mesh = sharding.make_mesh((1, 1, 1), [device])
  gib, step = 2**30, a.step
  if (
    not a.budget_gib
  ):  # what this process's allocator may hand out (XLA_PYTHON_CLIENT_MEM_FRACTION)
    a.budget_gib = round(device.memory_stats()['bytes_limit'] / gib, 2)
  budget = a.budget_gib * gib
  print(
    f'{a.spec}: one {device.device_kind} ({device.platform}), budget {a.budget_gib:g} GiB, '
    f'attention {config.model.attention_impl}, remat {config.model.remat}, one row per step'
  )
  compiled = {}

  def peak(t):
    t0 = time.perf_counter()
    try:
      compiled[t] = memory.step_peak(config, t, mesh)
    except Exception as e:  # noqa: BLE001  (a kernel's limit or an allocation: does not fit)
      print(f'  {t}: compile failed, counted as not fitting: {e!r}'[:300])
      compiled[t] = float('inf')
    print(f'  {t}: peak {compiled[t] / gib:.3f} GiB ({time.perf_counter() - t0:.1f} s)', flush=True)
    return compiled[t]

  lengths = [int(x) for x in a.fit_lengths.split(',')]
  peaks = [peak(t) for t in lengths]
  if not all(np.isfinite(peaks)):
    print(f'RESULT longest_{a.name} longest=0 note=fit_lengths_failed')
    return
  c, b, a0 = np.polyfit(np.array(lengths, float), np.array(peaks, float), 2)
  if c > 0 and b * b + 4 * c * (budget - a0) >= 0:
    guess = (-b + np.sqrt(b * b + 4 * c * (budget - a0))) / (2 * c)
  else:  # linear in T (a fused kernel), or a concave fit: the line through the last two
    slope = (peaks[-1] - peaks[-2]) / (lengths[-1] - lengths[-2])
    guess = lengths[-1] + (budget - peaks[-1]) / slope if slope > 0 else lengths[-1]
  print(
    f'  fit: {a0 / gib:.3f} GiB + {b * 2**10 / gib:.4f} GiB per 1k tokens + '
    f'{c * 2**20 / gib:.2e} GiB per (1k tokens)^2; solved for the budget: {guess:.0f}'
  )

  def bounds():  # (longest compiled that fits or 0, shortest compiled above it that does not)
    lo = max([t for t, p in compiled.items() if p <= budget], default=0)
    return lo, min([t for t, p in compiled.items() if t > lo and p > budget], default=None)

  t, delta = max(step, int(guess) // step * step), step
  for _ in range(a.max_compiles):
    lo, hi = bounds()
    if t in compiled or (hi is not None and hi - lo <= step):
      break
    peak(t)
    lo, hi = bounds()
    if hi is None:  # all fit so far: one step further, then twice as far, ...
      t, delta = lo // step * step + delta, 2 * delta
    else:
      t = (lo + hi) // 2 // step * step
      t = t if t > lo else hi  # nothing between: stop at the next check
  lo, hi = bounds()
  fits = f'{lo} ({compiled[lo] / gib:.2f} GiB)' if lo else 'none compiled'
  over = f'{hi}' if hi else 'not found'
  print(
    f'{a.spec}: longest compiled length that fits {a.budget_gib:g} GiB: {fits}; '
    f'shortest that does not: {over}; {len(compiled)} compiles'
  )
  print(
    f'RESULT longest_{a.name} longest={lo} peak_gib={compiled.get(lo, 0) / gib:.2f} '
    f'first_over={hi or 0} budget_gib={a.budget_gib:g}'
  )


# ----------------------------------------------------------------------------- summary


def _grep(path: str, pattern: str, group: int = 0) -> str:
  if not os.path.isfile(path):
    return ''
  with open(path, encoding='utf-8', errors='replace') as f:
    hits = re.findall(pattern, f.read(), re.M)
  if not hits:
    return ''
  hit = hits[-1]
  return hit if isinstance(hit, str) else hit[group]


def _results(out: str) -> dict:
  res = {}
  for path in sorted(glob.glob(os.path.join(out, '*.txt'))):
    with open(path, encoding='utf-8', errors='replace') as f:
      for line in f:
        if line.startswith('RESULT '):
          name, *kvs = line.split()[1:]
          res[name] = dict(kv.split('=', 1) for kv in kvs)
  return res


def summary(out: str, path: str) -> None:
  phases = []
  if os.path.isfile(path):
    with open(path, encoding='utf-8') as f:
      phases = [line.rstrip('\n').split('\t') for line in f if line.strip()]
  res = _results(out)
  txt = lambda name: os.path.join(out, f'{name}.txt')  # noqa: E731
  ceil = _grep(txt('setup'), r'bfloat16 ([\d.]+) GFLOP/s')

  def result(name):
    if name == 'setup':
      return f'bf16 matmul {float(ceil) / 1e3:.1f} TFLOP/s' if ceil else ''
    if name == 'check_attention':
      return _grep(txt(name), r'^attention check (\w+ \(worst [^)]*\))')
    if name.startswith('train_'):
      r = res.get(name[len('train_') :])
      if not r:
        return ''
      return (
        f'{float(r["tokens_per_s"]):,.0f} tok/s, MFU {float(r["mfu"]):.1%}, '
        f'{r["step_ms"]} ms/step, compile ~{r["compile_s"]} s, loss {r["final_loss"]}'
      )
    if name == 'longest':
      cells = [
        f'{k[len("longest_") :]}: {v["longest"]} ({v["peak_gib"]} GiB of {v["budget_gib"]})'
        for k, v in res.items()
        if k.startswith('longest_')
      ]
      return '; '.join(cells)
    if name == 'decode':
      rows = re.findall(r'^\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x', _read(txt(name)), re.M)
      return ', '.join(f'batch {b}: {float(o):,.0f} tok/s' for b, o, _, _ in rows)
    if name == 'serve':
      pat = r'^(sequential|server)\s+(\d+)\s+\d+\s+[\d.]+\s+([\d.]+)\s.*?([\d.]+)$'
      rows = re.findall(pat, _read(txt(name)), re.M)
      return ', '.join(f'{m} x{c}: {float(t):,.0f} tok/s ({x}x seq)' for m, c, t, x in rows)
    return ''

  hdr = f'| {"phase":<16} | {"rc":>4} | {"s":>5} | {"budget":>6} | result'
  print(hdr)
  print('|' + '-' * 18 + '|------|-------|--------|' + '-' * 40)
  for name, rc, secs, budget in phases:
    print(f'| {name:<16} | {rc:>4} | {secs:>5} | {budget:>6} | {result(name)}')


def _read(path: str) -> str:
  if not os.path.isfile(path):
    return ''
  with open(path, encoding='utf-8', errors='replace') as f:
    return f.read()


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  sub = p.add_subparsers(dest='cmd', required=True)
  c = sub.add_parser('corpus')
  c.add_argument('dest')
  c.add_argument('mb', type=float)
  m = sub.add_parser('mfu')
  m.add_argument('--workdir', required=True)
  m.add_argument('--ceiling', required=True, help="train_throughput.py --ceiling_only's output")
  m.add_argument('--name', required=True)
  g = sub.add_parser('longest')
  g.add_argument('--spec', required=True, help="a configs/ file and argument: 'llama.py:1b'")
  g.add_argument('--name', default='')
  g.add_argument('--set', action='append', help='config override KEY=VALUE (repeatable)')
  g.add_argument('--attention_impl', default='', help="'': the config's")
  g.add_argument(
    '--budget_gib', type=float, default=0, help="0: the device allocator's bytes_limit"
  )
  g.add_argument('--fit_lengths', default='8192,16384,32768')
  g.add_argument('--step', type=int, default=1024)
  g.add_argument('--max_compiles', type=int, default=4)
  s = sub.add_parser('summary')
  s.add_argument('out')
  s.add_argument('--phases', required=True, help="bench/gpu.sh's table: name, rc, s, budget")
  a = p.parse_args(argv)
  if a.cmd == 'corpus':
    corpus(a.dest, a.mb)
  elif a.cmd == 'mfu':
    mfu(a)
  elif a.cmd == 'longest':
    a.name = a.name or a.spec.replace('.py:', '_')
    longest(a)
  else:
    summary(a.out, a.phases)


if __name__ == '__main__':
  main()
