#!/bin/bash
# GRPO rollouts through the engine vs lm.generate's static batch (issue 30): a small gpt_base
# policy (200 steps) and reward model (40 steps), then rollout_time.py (interleaved timings,
# equality check) and ppo.py 2 steps with each backend (metrics compared).
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=bench/logs/engine_rollouts_2026-12-07
w=/tmp/rl30_bench
mkdir -p $w
[ -e $w/gpt/done ] || { python train.py --config=configs/gpt_base.py --workdir=$w/gpt \
  --config.train.steps=200 --config.train.batch_size=16 --config.eval_every=200 \
  --config.checkpoint_every=200 > $w/gpt.log 2>&1 && touch $w/gpt/done; }
[ -e $w/rm/done ] || { python dpo.py --config=configs/reward.py --workdir=$w/rm \
  --config.init_checkpoint=$w/gpt --config.train.steps=40 --config.eval_every=40 \
  --config.data.seq_len=64 --config.data.max_prompt_len=24 > $w/rm.log 2>&1 && touch $w/rm/done; }
{ echo "\$ python $out/rollout_time.py $w/gpt $w/rm 6"
  echo "# $(date -u '+%F %T UTC'), load $(cut -d' ' -f1-3 /proc/loadavg)"; } > $out/rollout_time.log
python $out/rollout_time.py $w/gpt $w/rm 6 2>&1 | grep --line-buffered -v '^W0\|^I0\|^WARNING' >> $out/rollout_time.log
for b in static engine; do
  rm -rf $w/ppo_$b
  args="--config=configs/ppo.py --workdir=$w/ppo_$b --config.init_checkpoint=$w/gpt --config.reward_model=$w/rm --config.algorithm=grpo --config.group_size=4 --config.train.steps=2 --config.log_every=1 --config.eval_every=2 --config.best_of_n=0 --config.generate.backend=$b"
  { echo "\$ python ppo.py $args"; echo "# $(date -u '+%F %T UTC'), load $(cut -d' ' -f1-3 /proc/loadavg)"; } > $out/ppo_$b.log
  t0=$SECONDS
  python ppo.py $args 2>&1 | grep --line-buffered -v '^W0\|^I0\|^WARNING' >> $out/ppo_$b.log
  echo "# wall $((SECONDS - t0)) s" >> $out/ppo_$b.log
  cp $w/ppo_$b/metrics.jsonl $out/ppo_${b}_metrics.jsonl
done
# every logged figure but time and responses/s, static vs engine
python - > $out/ppo_compare.log <<'PY'
import json
rows = {b: [json.loads(l) for l in open(f'bench/logs/engine_rollouts_2026-12-07/ppo_{b}_metrics.jsonl')] for b in ('static', 'engine')}
for s, e in zip(rows['static'], rows['engine']):
  diff = {k: (v, e.get(k)) for k, v in s.items() if k != 'time' and 'per_sec' not in k and v != e.get(k)}
  print(f"step {s['step']} {sorted(k for k in s if k not in ('step', 'time'))[0].split('/')[0]}: {'identical' if not diff else diff}")
PY
