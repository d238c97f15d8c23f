"""The benchmark scripts keep running: a tiny throughput run prints its table with sane losses,
and the fused-attention check passes on this machine. No timing is asserted (timings live in
bench/, as ratios)."""

import math
import os
import re

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def test_train_throughput_prints_table(run):
  proc = run(
    'bench/train_throughput.py',
    '--config=tiny',
    '--quick',
    '--hf=none',
    '--compile_layers=',
    '--repeats=1',
    '--loss_chunk=64',  # the fused cross-entropy (equal to full logits: tests/test_losses.py)
    '--doc_mask=1',
    '--models=bert,gpt,llama',
    '--matmul_n=256',
  )
  out = proc.stdout + proc.stderr
  rows = _table(proc.stdout)
  assert len(rows) == 3, out[-3000:]  # bert, gpt, llama
  size = dict(re.findall(r'(\w+)=(\d+)', re.search(r'^size: .*$', out, re.M).group(0)))
  d, L, m, T, B = (int(size[k]) for k in ('d', 'L', 'mlp', 'seq', 'batch'))
  V = 50257
  # The table's columns against each other and against the FLOP formula written out here
  # (GPT predicts every token): tokens/s = B*T / step, GFLOP/s = FLOPs / step.
  gpt_flops = B * T * (6 * L * (4 * d * d + 2 * d * m) + 12 * L * T * d) + 6 * d * V * B * T
  # Llama: SwiGLU of 2/3 the width (to a multiple of 64), kv_heads of head_dim d / heads, vocab
  # 32000
  kv, m_llama, h = int(size['kv_heads']), int(size['mlp_llama']), int(size['heads'])
  assert m_llama == 64 * math.ceil(2 * m / 3 / 64)
  llama_matmul = L * (2 * d * d + 2 * d * kv * (d // h) + 3 * d * m_llama)
  llama_flops = B * T * (6 * llama_matmul + 12 * L * T * d) + 6 * d * 32000 * B * T
  for name, step_ms, tok_s, tflop, gflop_s in rows:
    # within the printed precision (step 0.1 ms, tokens/s 1, TFLOP/step 1e-4, GFLOP/s 0.1): the
    # rounding of the printed result plus that of the printed inputs it is recomputed from
    rel = 0.051 / step_ms + 1e-4
    want = B * T / (step_ms / 1e3)
    assert abs(tok_s - want) <= 0.51 + want * rel, (name, tok_s, want)
    want = tflop * 1e3 / (step_ms / 1e3)
    assert abs(gflop_s - want) <= 0.051 + want * (rel + 5.1e-5 / tflop), (name, gflop_s, want)
    if 'gpt' in name:
      assert tflop == pytest.approx(gpt_flops / 1e12, abs=6e-5), (name, tflop, gpt_flops)
    if 'llama' in name:
      assert tflop == pytest.approx(llama_flops / 1e12, abs=6e-5), (name, tflop, llama_flops)
  losses = {
    name: float(v)
    for name, v in re.findall(
      r'  (ours \w+ \(.*?\)): loss after warm-up\+timed steps ([\d.]+)', out
    )
  }
  assert len(losses) == 3, out[-3000:]
  # a few steps from a 0.02-std init: each loss is still the uniform guess, ln V per predicted
  # token (+ ln 2 for BERT's NSP), which checks that the losses are per-token means
  for name, loss in losses.items():
    expected = {'bert': math.log(30522) + math.log(2), 'gpt': math.log(50257)}.get(
      name.split()[1], math.log(32000)
    )
    assert abs(loss - expected) < 0.2, (name, loss, expected)


def test_check_attention_passes(run):
  proc = run('bench/check_attention.py', '--impl=xla')
  assert 'attention check PASSED' in proc.stdout, proc.stdout + proc.stderr[-2000:]


def _table(stdout):
  """(run, step ms, tokens/s, TFLOP/step, GFLOP/s) of each of our rows in the printed table."""
  num = lambda x: float(x.replace(',', '').strip())  # noqa: E731
  rows = []
  for line in stdout.splitlines():
    cells = [c.strip() for c in line.split('|')[1:-1]]
    if cells and cells[0].startswith('ours '):
      rows.append((cells[0], num(cells[2]), num(cells[4]), num(cells[5]), num(cells[6])))
  return rows


def test_memory_lora_rows(run):
  """bench/memory.py's LoRA / QLoRA rows: the Llama 3.2 1B shape's state from the abstract state
  alone (the optimizer holds adapter moments only), and the compiled peak path on the tiny
  Llama."""
  proc = run(
    'bench/memory.py',
    '--configs=llama.py:1b',
    '--variants=full,lora,qlora',
    '--meshes=1,1,1:1,8,1',
    '--peak=0',
  )
  rows = _memory_rows(proc.stdout)
  assert len(rows) == 6, proc.stdout + proc.stderr[-3000:]
  full, lora, qlora = (rows[(v, '(1, 1, 1)')] for v in ('full', 'lora', 'qlora'))
  assert full['params'] == lora['params'] == qlora['params'] == '1236M'
  assert full['trainable'] == '1235.8M'
  # rank 16 on q, k, v, o (2048 -> 2048, 512, 512, 2048) and the SwiGLU MLP (2048 <-> 8192), 16
  # layers: r * (in + out) per projection
  adapters = 16 * 16 * (2 * 4096 + 2 * 2560 + 3 * 10240)
  assert lora['trainable'] == qlora['trainable'] == f'{adapters / 1e6:.1f}M'
  gib = 2**30
  assert abs(lora['opt'] - 8 * adapters / gib) < 1e-3  # two float32 moments per adapter weight
  assert abs(full['opt'] - 2 * full['params_gib']) < 2e-3  # float32 params and moments
  assert abs(lora['params_gib'] - (1235.8e6 * 2 + 4 * adapters) / gib) < 0.01  # bf16 base
  assert qlora['params_gib'] < 0.5 * lora['params_gib']  # NF4 kernels
  for r in rows.values():
    assert abs(r['state'] - r['params_gib'] - r['opt']) < 2e-3
  assert rows[('full', '(1, 8, 1)')]['state'] < 1.01 * full['state'] / 8
  proc = run(
    'bench/memory.py',
    '--configs=llama.py:cpu',
    '--variants=lora,qlora',
    '--meshes=1,1,1',
    '--seq_len=32',
    '--unhoisted=1',
  )
  rows = _memory_rows(proc.stdout)
  assert len(rows) == 2, proc.stdout + proc.stderr[-3000:]
  for r in rows.values():
    assert r['peak'] >= r['state'] and r['unhoisted'] >= r['state'], r
    assert r['fits'] == ['yes / yes', 'yes / yes'], r


def _memory_rows(stdout):
  """{(variant, mesh): cells} of bench/memory.py's table."""
  rows = {}
  for line in stdout.splitlines():
    cells = [c.strip() for c in line.split('|')[1:-1]]
    if len(cells) != 15 or not cells[0].startswith('llama.py'):
      continue
    num = lambda x: float(x) if x != '-' else None  # noqa: E731
    rows[(cells[1], cells[4])] = dict(
      params=cells[2],
      trainable=cells[3],
      params_gib=float(cells[6]),
      opt=float(cells[7]),
      state=float(cells[8]),
      peak=num(cells[11]),
      unhoisted=num(cells[12]),
      fits=cells[13:15],
    )
  return rows


def test_harness_bench_agrees(run, tmp_path):
  """bench/harness.py on a random tiny GPT-2: both backends score the same requests (its
  agreement lines: the tests' 1e-4 bar, rolling sums to float32 rounding) and every timed row is
  printed."""
  import pydoc_data.topics

  from conftest import tiny_gpt2_dir
  from lm.data import tokenizer as tokenizer_lib

  docs = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)[:20]]
  tok = tokenizer_lib.train_tokenizer(docs, 'bpe', 300)
  tiny_gpt2_dir(tok, tmp_path)
  tok.save(str(tmp_path))
  out = run(
    'bench/harness.py', f'--checkpoint={tmp_path}', '--tasks=pydoc_mc,pydoc_ppl', '--limit=1'
  ).stdout
  ll = re.search(
    r'^loglikelihood: max \|ours - HF\| (\S+); is-greedy flags equal: (\w+)', out, re.M
  )
  rolling = re.search(r'^loglikelihood_rolling: .*, max relative (\S+)$', out, re.M)
  assert ll and rolling, out
  assert float(ll.group(1)) < 1e-4 and ll.group(2) == 'True' and float(rolling.group(1)) < 1e-6
  rows = [l for l in out.splitlines() if l.startswith('| loglikelihood') or l.startswith('| all')]
  assert len(rows) == 6, out  # two request types and the total, two passes each


def test_serve_bench_prints_table(run):
  """bench/serve.py on a tiny model, 1 and 2 clients: a sequential row and one server row per
  client count, the server's texts equal lm.generate's, and the columns agree with each other
  (tokens/s = tokens / wall, x_seq = tokens/s over the sequential row's)."""
  proc = run(
    'bench/serve.py',
    '--hidden=32',
    '--layers=1',
    '--heads=2',
    '--vocab=300',
    '--requests=2',
    '--clients=1,2',
    '--max_tokens=8',
    '--slots=2',
  )
  out = proc.stdout + proc.stderr[-3000:]
  assert 'differ' not in proc.stdout, out
  rows = [line.split() for line in proc.stdout.splitlines()]
  rows = [r for r in rows if r and r[0] in ('sequential', 'server')]
  assert [(r[0], r[1]) for r in rows] == [('sequential', '1'), ('server', '1'), ('server', '2')]
  seq_tps = float(rows[0][4])
  for mode, _, tokens, wall, tps, *lat, ratio in rows:
    assert 0 < int(tokens) <= 2 * 8, out  # requests x max_tokens, fewer where EOS came first
    if float(wall) >= 0.02:  # else the printed wall's rounding (0.5 ms) decides too much
      want = int(tokens) / float(wall)
      assert abs(float(tps) - want) <= 0.051 + want * 0.0006 / float(wall), (mode, tps, want)
    assert float(ratio) == pytest.approx(float(tps) / seq_tps, abs=0.006), (mode, ratio)
    assert float(lat[0]) <= float(lat[1]), (mode, lat)  # p50 <= p95
    if mode == 'server':
      assert float(lat[2]) <= float(lat[0]), (mode, lat)  # first token before the last


def test_longest_fit_finds_the_boundary():
  """bench/memory.py --longest's search: whatever the fitted quadratic guesses (right, far too
  short, far too long), bisection over compiled peaks lands on the last length that fits."""
  import sys  # noqa: PLC0415

  sys.path.insert(0, os.path.join(ROOT, 'bench'))
  from memory import longest_fit  # noqa: PLC0415

  for true in (800, 1500, 7168, 100_000):
    peak = lambda t: 1.0 if t <= true else 2.0  # noqa: E731
    want = (true // 1024 * 1024, 1.0) if true >= 1024 else (0, 0)
    for c in (1.5 / true**2, 1e-12, 1.0):  # the guess: about right, far too long, far too short
      assert longest_fit(peak, 1.5, (c, 0.0, 0.0)) == want
