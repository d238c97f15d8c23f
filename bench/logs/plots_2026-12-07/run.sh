#!/bin/bash
# The pictures of docs/results.md "Training curves" and the README, on this project's 2-core CPU VM
# (shared with other jobs and tests, so speeds in the logs are not measurements). Ran 2026-12-07
# 16:33-17:00 UTC; NAME.log is each run's stdout + stderr (with `time`), NAME.metrics.jsonl its
# WORKDIR/metrics.jsonl.
set -e
cd "$(dirname "$0")/../../.."
LOG=bench/logs/plots_2026-12-07
P=/tmp/plots
# The README's main job (configs/base.py: BERT MLM + NSP, 600 steps), then its curves.
{ time python train.py --config=configs/base.py --workdir=$P/lm_base; } > $LOG/lm_base.log 2>&1
python -m lm.plot $P/lm_base --out=$LOG/lm_base.png
# configs/finetune_cls.py from that body, and from a fresh body of the same architecture and
# tokenizer (init=random takes only the checkpoint's model config and tokenizer).
{ time python finetune.py --config=configs/finetune_cls.py --workdir=$P/ft_pre \
  --config.init_checkpoint=$P/lm_base; } > $LOG/ft_pre.log 2>&1
{ time python finetune.py --config=configs/finetune_cls.py --workdir=$P/ft_random \
  --config.init_checkpoint=$P/lm_base --config.init=random; } > $LOG/ft_random.log 2>&1
python -m lm.plot $P/ft_pre $P/ft_random --labels=pretrained,random \
  --metrics=train/loss,eval/loss,eval/accuracy,eval/f1,train/learning_rate \
  --out=$LOG/finetune_cls_pretrained_vs_random.png
for r in lm_base ft_pre ft_random; do cp $P/$r/metrics.jsonl $LOG/$r.metrics.jsonl; done
