#!/bin/bash
# The README's downstream figures, end to end on this machine's CPU with the shipped configs:
# pretrain the two defaults (the README's main job and its GPT twin), then fine-tune, evaluate
# on the test split (nothing was chosen on it), train the reward model and DPO, and score
# few-shot prompting. Every command is echoed into its log under ${OUT}.
#   bash bench/downstream.sh     (about 1 h on 2 cores; WD=/tmp/lm_downstream OUT=bench/logs/...)
set -euo pipefail
cd "$(dirname "$0")/.."
wd=${WD:-/tmp/lm_downstream}
out=${OUT:-bench/logs/downstream_$(date +%F)}
mkdir -p "$out" "$wd"
export PYTHONUNBUFFERED=1
run() {  # log name, then the script and its flags
  local log=$out/$1.log
  shift
  { echo "\$ python $*"; echo "# $(date -u '+%F %T UTC'), load $(cut -d' ' -f1-3 /proc/loadavg)"; } | tee "$log"
  local t0=$SECONDS
  python "$@" 2>&1 | grep -v '^W0\|^I0\|^WARNING' | tee -a "$log"
  echo "# wall $((SECONDS - t0)) s" | tee -a "$log"
}
run pretrain_bert train.py --config=configs/base.py --workdir="$wd/base"
run pretrain_gpt train.py --config=configs/gpt_base.py --workdir="$wd/gpt"
for task in cls qa tokens; do
  run "finetune_$task" finetune.py --config="configs/finetune_$task.py" --workdir="$wd/ft_$task" \
    --config.init_checkpoint="$wd/base"
  run "eval_$task" eval.py --checkpoint="$wd/ft_$task"
done
run reward dpo.py --config=configs/reward.py --workdir="$wd/rm" --config.pretrained="$wd/gpt"
run eval_reward eval.py --checkpoint="$wd/rm"
run dpo dpo.py --config=configs/dpo.py --workdir="$wd/dpo" --config.pretrained="$wd/gpt"
run eval_dpo eval.py --checkpoint="$wd/dpo"
run fewshot eval.py --config=configs/fewshot.py --checkpoint="$wd/gpt" --output="$wd/fewshot.json"
