#!/bin/bash
# README "T5" and "SFT and summarization": configs/t5.py's 600-step span-corruption default, then
# configs/t5_finetune.py (offline summarization, 1000 steps, best/ by validation loss) from it and
# from random init (the same architecture, tokenizer, data, steps and selection); the decoding is
# chosen on validation ROUGE-L of the pretrained run (12 settings) and is the config's default;
# test scored once per run by eval.py. Then how much each reads its input (bench/input_ablation.py).
set -e
cd "$(dirname "$0")/../../.."
LOG=bench/logs/t5_2026-11-26
B=${B:-/tmp/t5_bench}
mkdir -p $B
[ -f $B/lm_t5/checkpoints/600/_CHECKPOINT_METADATA ] || \
  python train.py --config=configs/t5.py --workdir=$B/lm_t5 > $LOG/pretrain.log 2>&1
for init in pretrained random; do
  rm -rf $B/sum_$init
  python sft.py --config=configs/t5_finetune.py --workdir=$B/sum_$init \
    --config.init_checkpoint=$B/lm_t5 --config.init=$init > $LOG/sum_${init}_train.log 2>&1
done
GRID=$(python -c "
import itertools, json
g = [{'strategy': s, 'repetition_penalty': r, 'no_repeat_ngram_size': n, 'min_new_tokens': m}
     for s, r in (('greedy', 1.0), ('beam', 1.0), ('beam', 0.5))
     for n, m in itertools.product([0, 2], [0, 8])]
print(json.dumps(g))")
python bench/summarize_decoding.py --workdir=$B/sum_pretrained "$GRID" 2>&1 | grep -v WARNING \
  > $LOG/sum_decoding_validation.log
for init in pretrained random; do
  python eval.py --checkpoint=$B/sum_$init --output=$LOG/sum_${init}_eval_test.json \
    --config=configs/t5_finetune.py --config.init_checkpoint=$B/lm_t5 --config.init=$init \
    2>&1 | grep -v WARNING > $LOG/sum_${init}_eval_test.log
  python bench/input_ablation.py --workdir=$B/sum_$init 2>&1 | grep -v WARNING \
    > $LOG/sum_${init}_input_ablation.log
done
# Seeds 1 and 2 of both (the same commands, stopping 3 evaluations after the best: best/ as a
# full run's), logs in seeds/.
mkdir -p $LOG/seeds
for seed in 1 2; do
  for init in pretrained random; do
    rm -rf $B/sum_${init}_s$seed
    python sft.py --config=configs/t5_finetune.py --workdir=$B/sum_${init}_s$seed \
      --config.init_checkpoint=$B/lm_t5 --config.init=$init --config.seed=$seed \
      --config.early_stopping.patience=3 2>&1 | grep -v WARNING > $LOG/seeds/sum_${init}_s${seed}_train.log
    python eval.py --checkpoint=$B/sum_${init}_s$seed \
      --output=$LOG/seeds/sum_${init}_s${seed}_eval_test.json --config=configs/t5_finetune.py \
      --config.init_checkpoint=$B/lm_t5 --config.init=$init --config.seed=$seed \
      2>&1 | grep -v WARNING > $LOG/seeds/sum_${init}_s${seed}_eval_test.log
  done
done
