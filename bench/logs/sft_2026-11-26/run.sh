#!/bin/bash
# The acceptance runs of README "SFT and summarization", on this project's 2-core CPU VM.
# Pretraining (configs/gpt_base.py, the README command) ran first into /tmp/sft_bench/lm_gpt:
#   python train.py --config=configs/gpt_base.py --workdir=/tmp/sft_bench/lm_gpt > pretrain.log
# Then the two chains below ran side by side.
set -e
cd "$(dirname "$0")/../../.."
LOG=bench/logs/sft_2026-11-26
B=/tmp/sft_bench
(
  python sft.py --config=configs/sft.py --workdir=$B/sft --config.init_checkpoint=$B/lm_gpt > $LOG/sft_train.log 2>&1
  python eval.py --checkpoint=$B/sft --output=$B/sft/eval_test.json > $LOG/sft_eval_test.log 2>&1
) &
(
  python sft.py --config=configs/summarize.py --workdir=$B/sum --config.init_checkpoint=$B/lm_gpt > $LOG/sum_train.log 2>&1
  # Decoding chosen on the validation split (ROUGE-L), then reported once on test.
  for s in beam greedy; do
    python eval.py --checkpoint=$B/sum --split=validation --output=$B/sum/eval_val_$s.json \
      --config=configs/summarize.py --config.init_checkpoint=$B/lm_gpt --config.generate.strategy=$s \
      > $LOG/sum_eval_validation_$s.log 2>&1
  done
  best=$(python -c "import json;print(max(['beam','greedy'],key=lambda s:json.load(open('$B/sum/eval_val_'+s+'.json'))['rougeL']))")
  echo "chosen on validation ROUGE-L: $best" > $LOG/sum_choice.log
  python eval.py --checkpoint=$B/sum --output=$B/sum/eval_test.json \
    --config=configs/summarize.py --config.init_checkpoint=$B/lm_gpt --config.generate.strategy=$best \
    > $LOG/sum_eval_test.log 2>&1
) &
wait
