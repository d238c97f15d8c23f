#!/bin/bash
# README "T5": configs/t5.py's 600-step span-corruption default, then configs/t5_finetune.py
# (offline summarization) from it and from random init (same architecture, tokenizer, data,
# steps and selection on validation loss); the decoding is chosen on validation ROUGE-L for the
# pretrained run and used for both; test scored once each by eval.py.
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
g = [{'strategy': 'greedy', 'repetition_penalty': 1.0, 'no_repeat_ngram_size': 0, 'min_new_tokens': 0}]
g += [{'strategy': 'beam', 'repetition_penalty': r, 'no_repeat_ngram_size': n, 'min_new_tokens': m}
      for r, n, m in itertools.product([1.0, 0.5], [0, 2], [0, 8])]
print(json.dumps(g))")
python bench/summarize_decoding.py --workdir=$B/sum_pretrained "$GRID" 2>&1 | grep -v WARNING \
  > $LOG/sum_decoding_validation.log
# The chosen setting (CHOSEN in that log) is configs/t5_finetune.py's default decoding.
for init in pretrained random; do
  python eval.py --checkpoint=$B/sum_$init --output=$LOG/sum_${init}_eval_test.json \
    --config=configs/t5_finetune.py --config.init_checkpoint=$B/lm_t5 --config.init=$init \
    > $LOG/sum_${init}_eval_test.log 2>&1
done
