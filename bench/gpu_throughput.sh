#!/bin/bash
# The GPU measurements in README.md: fused-attention check, then GPT-2 small and medium
# training throughput / MFU in bf16 with cuDNN flash attention, unrolled vs scanned layers.
# One invocation (one interleaved group) per log file, under ${OUT:-.}, named as in
# bench/logs/h100_2026-11-25/ (made by this script when it was bench/gpu.sh). About 6 minutes on
# one H100. bench/gpu.sh is the one-invocation run of everything measured on a GPU (train.py on
# real data included); this is the synthetic-batch A/B of train step variants, with HF PyTorch.
#   bash bench/gpu_throughput.sh            (CHECK=0 skips the attention check)
set -o pipefail
out=${OUT:-.}
export PYTHONUNBUFFERED=1
quiet() { grep -v "^W0\|^I0"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,memory.used --format=csv
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
if [ "${CHECK:-1}" = 1 ]; then
  timeout 120 python3 bench/check_attention.py --impl=cudnn 2>&1 | quiet | tee $out/check_attention.txt
fi
# Synthetic token batches at the shapes of configs/gpt2.py (bf16, params and AdamW in float32),
# batch 16 x 1024, no remat (the config sets remat='dots'), plain causal masks.
common="--models=gpt --dtype=bfloat16 --attention_impl=cudnn --compile_layers= --steps=10 --repeats=3 --peak_tflops=989"
tp() {  # log name, then flags
  local log=$1
  shift
  timeout 240 python3 bench/train_throughput.py $common "$@" 2>&1 | quiet | tee $out/$log.txt
}
tp gpt2_small_scan0 --config=gpt2_small --batch=16 --scan_layers=0 --loss_chunk=0 --doc_mask=0 --hf=none
tp gpt2_small_scan1 --config=gpt2_small --batch=16 --scan_layers=1 --loss_chunk=0,4096 --doc_mask=0 --hf=none
# HF PyTorch shares the GPU with JAX in the same process: JAX must not preallocate 75% of it.
XLA_PYTHON_CLIENT_MEM_FRACTION=0.55 tp gpt2_small_scan_variants_hf --config=gpt2_small \
    --batch=16 --scan_layers=1 --loss_chunk=0,4096 --doc_mask=0,1 --hf=eager
tp gpt2_medium_scan0 --config=gpt2_medium --batch=16 --scan_layers=0 --loss_chunk=0 --doc_mask=0 --hf=none
tp gpt2_medium_scan1 --config=gpt2_medium --batch=16 --scan_layers=1 --loss_chunk=0,4096 --doc_mask=0 --hf=none
