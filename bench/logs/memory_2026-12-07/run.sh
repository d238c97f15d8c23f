#!/bin/sh
# Issue 28: per-device state and compiled train-step peak of the Llama 3.2 1B and Llama 3 8B
# shapes (configs/llama.py:1b, :8b): full fine-tuning (float32 params; bfloat16 params) vs LoRA
# rank 16 on every projection vs QLoRA (NF4 base, rank 16), LoRA/QLoRA bases in bfloat16, on 1
# device and on full FSDP over 8 simulated CPU devices; one row of 2048 tokens per device,
# configs/llama.py's remat='dots', bf16 compute and loss_chunk=1024, layers scanned.
# Run from the repository root: sh bench/logs/memory_2026-12-07/run.sh   (about 12 minutes)
set -e
out=bench/logs/memory_2026-12-07
{ echo "HEAD $(git rev-parse HEAD)"; echo 'uncommitted in lm/ when run:'; git status --short lm; } > $out/tree.txt
/usr/bin/time -v python bench/memory.py --configs=llama.py:1b,llama.py:8b \
  --variants=full,full-bf16,lora,qlora --meshes=1,1,1:1,8,1 --seq_len=2048 --unhoisted=1 \
  > $out/lora.log 2> $out/lora.stderr
# the same on one device with every layer rematerialized (remat='full') instead of 'dots'
/usr/bin/time -v python bench/memory.py --configs=llama.py:1b,llama.py:8b \
  --variants=full,full-bf16,lora,qlora --meshes=1,1,1 --seq_len=2048 --unhoisted=1 --remat=full \
  > $out/lora_remat_full.log 2> $out/lora_remat_full.stderr
# float32 models: the as-compiled peak against the 2026-11-26 table, and the unhoisted one
/usr/bin/time -v python bench/memory.py --configs=gpt2.py:small,bert.py:base \
  --meshes=1,1,1:1,8,1 --unhoisted=1 > $out/f32_check.log 2> $out/f32_check.stderr
# the 1B step's saved residuals and largest temporaries, full fine-tuning vs LoRA
sh $out/buffers.sh > $out/buffers.log 2> $out/buffers.stderr
