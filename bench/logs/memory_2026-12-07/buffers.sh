#!/bin/sh
# What the 1B step's temporaries hold (one device, 1024 tokens, unhoisted), full fine-tuning vs
# LoRA: XLA:CPU's buffer assignment, dumped to /tmp. Prints, per variant, the stacked residuals
# the layer loop saves (dynamic-update-slices into [layers, 1, tokens, width]) and the largest
# values of the temporary allocation with their defining instruction.
# Run from the repository root (run.sh calls it): sh bench/logs/memory_2026-12-07/buffers.sh
set -e
for v in full lora; do
  d=/tmp/memory_2026-12-07_dump_$v
  rm -rf $d
  XLA_FLAGS="--xla_dump_to=$d --xla_dump_hlo_module_re=.*step_fn.* --xla_disable_hlo_passes=while-loop-invariant-code-motion" \
    python bench/memory.py --configs=llama.py:1b --variants=$v --meshes=1,1,1 --seq_len=1024 \
    | grep '^| llama'
  hlo=$(ls $d/*jit_step_fn.cpu_after_optimizations.txt)
  ba=$(ls $d/*jit_step_fn.cpu_after_optimizations-buffer-assignment.txt)
  echo "$v: stacked residuals saved by the layer loop (count, shape)"
  grep -oE "%dynamic-update-slice[a-z_.0-9]* = (bf16|f32)\[16,1,1024,[0-9]+\]" $hlo \
    | sed -E 's/.* = //' | sort | uniq -c
  alloc=$(grep '^allocation' $ba | sed -E 's/allocation ([0-9]+): size ([0-9]+).*/\2 \1/' \
    | sort -rn | head -1 | cut -d' ' -f2)
  echo "$v: largest values in the temporary allocation $alloc (MiB, instruction)"
  awk "/^allocation $alloc:/{on=1;next} /^allocation/{on=0} on" $ba \
    | sed -E 's/.*value: <[0-9]+ ([^ ]+) @[0-9]+> \(size=([0-9]+),offset=[0-9]+\).*/\2 \1/' \
    | sort -rn | awk '!seen[$2]++' | head -12 | while read -r size name; do
      def=$(grep -m1 -E "^\s*(ROOT )?%$name = " $hlo | sed -E 's/^\s*//; s/\), .*/)/' | cut -c1-110)
      echo "  $((size / 1048576)) $def"
    done
done
