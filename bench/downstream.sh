#!/bin/bash
# The README's downstream figures, end to end on this machine's CPU with the shipped configs:
# pretrain the two defaults (the README's main job and its GPT twin), then fine-tune, evaluate
# on the test split (nothing was chosen on it), train the reward model and DPO, and score
# few-shot prompting. Every command is echoed into its log under ${OUT}.
#   bash bench/downstream.sh     (about 1 h on 2 cores; WD=/tmp/lm_downstream OUT=bench/logs/...)
#   STEPS='finetune_cls reward' bash bench/downstream.sh    (some steps, on earlier ones' workdirs)
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
  python "$@" 2>&1 | grep --line-buffered -v '^W0\|^I0\|^WARNING' | tee -a "$log"
  echo "# wall $((SECONDS - t0)) s" | tee -a "$log"
}
steps=${STEPS:-pretrain_bert pretrain_gpt finetune_cls reward dpo fewshot finetune_tokens finetune_qa}
for step in $steps; do
  case $step in
    pretrain_bert) run pretrain_bert train.py --config=configs/base.py --workdir="$wd/base" ;;
    pretrain_gpt) run pretrain_gpt train.py --config=configs/gpt_base.py --workdir="$wd/gpt" ;;
    finetune_*)
      task=${step#finetune_}
      run "$step" finetune.py --config="configs/$step.py" --workdir="$wd/ft_$task" \
        --config.init_checkpoint="$wd/base"
      run "eval_$task" eval.py --checkpoint="$wd/ft_$task" ;;
    reward | dpo)
      run "$step" dpo.py --config="configs/$step.py" --workdir="$wd/$step" --config.init_checkpoint="$wd/gpt"
      run "eval_$step" eval.py --checkpoint="$wd/$step" ;;
    fewshot)
      run fewshot eval.py --config=configs/fewshot.py --checkpoint="$wd/gpt" --output="$wd/fewshot.json" ;;
  esac
done
