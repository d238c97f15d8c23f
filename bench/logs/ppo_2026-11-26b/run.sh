#!/bin/bash
# PPO from the SFT policy (issue 16's pipeline: pretrain -> SFT -> reward model -> PPO), scored
# on the reward model's held-out test prompts against best-of-n from that same SFT policy.
# Reuses earlier runs' workdirs (their logs are committed):
#   /tmp/sft_bench/sft  the SFT policy   (bench/logs/sft_2026-11-26/run.sh: gpt_base 600 steps -> configs/sft.py)
#   /tmp/ppo_bench/rm   the reward model (bench/logs/ppo_2026-11-26/COMMANDS.md: gpt_base -> configs/reward.py)
# Both tokenizers are byte-identical (deterministic tokenizer training; checked below).
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=bench/logs/ppo_2026-11-26b
cmp /tmp/sft_bench/sft/tokenizer.json /tmp/ppo_bench/rm/tokenizer.json
{ echo '$ python ppo.py --config=configs/ppo.py --workdir=/tmp/ppo_bench/ppo_from_sft --config.pretrained=/tmp/sft_bench/sft --config.reward_model=/tmp/ppo_bench/rm'
  echo "# $(date -u '+%F %T UTC'), load $(cut -d' ' -f1-3 /proc/loadavg)"; } > $out/ppo.log
t0=$SECONDS
python ppo.py --config=configs/ppo.py --workdir=/tmp/ppo_bench/ppo_from_sft \
  --config.pretrained=/tmp/sft_bench/sft --config.reward_model=/tmp/ppo_bench/rm 2>&1 \
  | grep --line-buffered -v '^W0\|^I0\|^WARNING' >> $out/ppo.log
echo "# wall $((SECONDS - t0)) s" >> $out/ppo.log
cp /tmp/ppo_bench/ppo_from_sft/metrics.jsonl $out/ppo_metrics.jsonl
