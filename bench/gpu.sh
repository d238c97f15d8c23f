#!/bin/bash
# The GPU measurements in README.md: fused-attention check, then GPT-2 small and medium
# training throughput / MFU in bf16 with cuDNN flash attention, unrolled vs scanned layers.
# Logs go under ${OUT:-.}. About 4 minutes on one H100.
#   bash bench/gpu.sh            (CHECK=0 skips the attention check)
set -o pipefail
out=${OUT:-.}
export PYTHONUNBUFFERED=1
quiet() { grep -v "^W0\|^I0"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,memory.used --format=csv
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
if [ "${CHECK:-1}" = 1 ]; then
  timeout 120 python3 bench/check_attention.py --impl=cudnn 2>&1 | quiet | tee $out/check_attention.txt
fi
common="--models=gpt --dtype=bfloat16 --attention_impl=cudnn --doc_mask=0 --compile_layers= --steps=10 --repeats=3 --peak_tflops=989"
# HF PyTorch shares the GPU with JAX in the same process: JAX must not preallocate 75% of it.
XLA_PYTHON_CLIENT_MEM_FRACTION=0.55 timeout 240 python3 bench/train_throughput.py \
    --config=gpt2_small --batch=16 --scan_layers=0,1 --loss_chunk=0,4096 $common --hf=eager \
    2>&1 | quiet | tee $out/gpt2_small.txt
timeout 240 python3 bench/train_throughput.py --config=gpt2_medium --batch=16 --scan_layers=0,1 \
    --loss_chunk=0 $common --hf=none 2>&1 | quiet | tee $out/gpt2_medium.txt
