#!/bin/bash
# Issue 28: HF import, generation and export on an HF directory of the Qwen2-0.5B shape (494M
# params, random weights, 0.92 GiB of bf16 safetensors), before and after streamed import,
# params-only workdir loading and bf16 export. 2-core CPU, 23 GB RAM, run alone on the machine.
#   BEFORE: the code at 84d48ee in a worktree (`git worktree add /tmp/base 84d48ee`), same venv;
#           scripts run from that tree import its `lm` (each log's first line says which).
#   AFTER:  this commit.
set -x
NEW=$(cd "$(dirname "$0")/../../.." && pwd)
BASE=/tmp/base
OUT=$NEW/bench/logs/qwen_shape_2026-12-07
D=/tmp/qwen_shape
SFT=/tmp/qwen_sft
source "$NEW/.venv/bin/activate"
export JAX_PLATFORMS=cpu
which_lm() { python -c 'import lm, os; print("lm from", os.path.dirname(lm.__file__))'; }

# The HF directory (bf16 safetensors + a 2,000-token BPE tokenizer.json).
rm -rf $D && python "$NEW/bench/qwen_shape.py" make $D > $OUT/make.log 2>&1

# generate.py on the HF directory: peak RSS and wall time.
for side in before after; do
  dir=$([ $side = before ] && echo $BASE || echo $NEW)
  (cd $dir && which_lm && /usr/bin/time -v python generate.py --checkpoint=$D \
     --prompt="The list is sorted" --max_new_tokens=20) > $OUT/generate_$side.log 2>&1
done

# Export: lm.pretrained.load(D) then lm.hf.export_pretrained: peak RSS, dtypes and size.
for side in before after; do
  dir=$([ $side = before ] && echo $BASE || echo $NEW)
  rm -rf /tmp/qwen_export_$side
  (cd $dir && PYTHONPATH=$dir /usr/bin/time -v python "$NEW/bench/qwen_shape.py" export $D \
     /tmp/qwen_export_$side) > $OUT/export_$side.log 2>&1
done
# The export again, then both directories loaded in transformers: equal tensors and logits?
rm -rf /tmp/qwen_export_check
python "$NEW/bench/qwen_shape.py" export $D /tmp/qwen_export_check --check \
  > $OUT/export_after_check.log 2>&1

# A full fine-tuning workdir (float32 params and AdamW moments: 2 steps at batch 1, written by
# the code before), then generate.py on it: before, the whole train state is restored; after,
# the params only.
rm -rf $SFT
(cd $BASE && which_lm && /usr/bin/time -v python sft.py --config=configs/sft.py --workdir=$SFT \
   --config.init_checkpoint=$D --config.train.batch_size=1 --config.train.steps=2 \
   --config.checkpoint_every=2 --config.log_every=1 --config.data.eval_fraction=0.0) \
   > $OUT/sft_before.log 2>&1
for side in before after; do
  dir=$([ $side = before ] && echo $BASE || echo $NEW)
  (cd $dir && which_lm && /usr/bin/time -v python generate.py --checkpoint=$SFT \
     --prompt="The list is sorted" --max_new_tokens=20) > $OUT/generate_sft_$side.log 2>&1
done
# sft.py with this commit, same data and batch, 6 steps each: full fine-tuning (float32 master
# params and AdamW moments, as lora.configure gives full training) against LoRA rank 16 on the
# frozen bf16 base (adapters and their moments float32). Step speed: rows_per_sec of steps 3-6.
# LoRA first, and `sync` before each run: full fine-tuning writes a 5.4 GB checkpoint whose
# write-back would otherwise run during the next measurement.
for run in lora full; do
  extra=$([ $run = lora ] && echo "--config.lora.rank=16" || echo "")
  rm -rf /tmp/qwen_sft_$run
  sync && sleep 5
  (cd $NEW && which_lm && /usr/bin/time -v python sft.py --config=configs/sft.py \
     --workdir=/tmp/qwen_sft_$run --config.init_checkpoint=$D --config.train.batch_size=1 \
     --config.train.steps=6 --config.checkpoint_every=6 --config.log_every=1 \
     --config.data.eval_fraction=0.0 $extra) > $OUT/sft_${run}_after.log 2>&1
done
# generate.py on the LoRA workdir (params only: the bf16 base, the adapters merged).
(cd $NEW && which_lm && /usr/bin/time -v python generate.py --checkpoint=/tmp/qwen_sft_lora \
   --prompt="The list is sorted" --max_new_tokens=20) > $OUT/generate_sft_lora_after.log 2>&1
du -sb $D $SFT/checkpoints /tmp/qwen_sft_full/checkpoints /tmp/qwen_sft_lora/checkpoints \
  > $OUT/sizes.log
grep -H -E "Maximum resident|Elapsed \(wall" $OUT/*.log > $OUT/summary.txt
grep -h '^{' $OUT/*.log >> $OUT/summary.txt
