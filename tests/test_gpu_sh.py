"""bench/gpu.sh parses as bash, and its summary reads the phases' logs (no JAX: < 1 s). The
script itself runs end to end in its CPU smoke mode (`SMOKE=1 bash bench/gpu.sh`, minutes)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'bench'))

import gpu_report  # noqa: E402


def test_gpu_sh_parses():
  subprocess.run(['bash', '-n', os.path.join(ROOT, 'bench', 'gpu.sh')], check=True)


def test_flops_per_token_gpt2_small():
  model = dict(hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=0, mlp_dim=3072)
  fpt, n = gpu_report.flops_per_token({**model, 'mlp': 'dense'}, 1024, 50257)
  assert n == 12 * (4 * 768**2 + 2 * 768 * 3072)  # bench/train_throughput.py's N_matmul
  assert fpt == 6 * n + 12 * 12 * 1024 * 768 + 6 * 768 * 50257


def test_summary_reads_logs(tmp_path, capsys):
  logs = {
    'setup': 'XLA matmul ceiling (8192x8192): float32 362797 GFLOP/s, bfloat16 692683 GFLOP/s\n',
    'check_attention': 'attention check PASSED (worst 7.07e-03, tol 0.02) for cudnn,flash on H100\n',
    'train_gpt2_small': 'RESULT gpt2_small tokens_per_s=400000 step_ms=41.0 mfu=0.4500 '
    'compile_s=20.1 final_loss=7.100\n',
    'longest': 'RESULT longest_gpt2_small longest=65536 peak_gib=70.10 first_over=73728 '
    'budget_gib=75.6\n',
    'decode': '    1     1000.0      100.0  10.00x\n',
    'serve': 'server          32   2048    1.000    2048.0    0.900    0.950    0.100    0.200   4.00\n',
  }
  for name, text in logs.items():
    (tmp_path / f'{name}.txt').write_text(text)
  phases = tmp_path / 'phases.tsv'
  phases.write_text(''.join(f'{n}\t0\t10\t60\n' for n in logs))
  gpu_report.summary(str(tmp_path), str(phases))
  out = capsys.readouterr().out
  for want in (
    'bf16 matmul 692.7 TFLOP/s',
    'PASSED (worst 7.07e-03, tol 0.02)',
    '400,000 tok/s, MFU 45.0%',
    'gpt2_small: 65536 (70.10 GiB of 75.6)',
    'batch 1: 1,000 tok/s',
    'server x32: 2,048 tok/s (4.00x seq)',
  ):
    assert want in out, (want, out)
