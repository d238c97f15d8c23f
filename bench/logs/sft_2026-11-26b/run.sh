#!/bin/bash
# README "SFT and summarization": configs/summarize.py with its decoding chosen on validation.
# Starts from the same pretrained model as bench/logs/sft_2026-11-26 (configs/gpt_base.py, 600
# steps, its pretrain.log), in /tmp/sft_bench/lm_gpt:
#   python train.py --config=configs/gpt_base.py --workdir=/tmp/sft_bench/lm_gpt
set -e
cd "$(dirname "$0")/../../.."
LOG=bench/logs/sft_2026-11-26b
B=/tmp/sft_bench
rm -rf $B/sum_b
python sft.py --config=configs/summarize.py --workdir=$B/sum_b --config.init_checkpoint=$B/lm_gpt \
  > $LOG/sum_train.log 2>&1
# Decoding grid on the validation split (ROUGE-L): greedy and beam 4 (the previous default), then
# beam 4 x repetition_penalty x no_repeat_ngram_size x min_new_tokens; test scored once.
GRID=$(python -c "
import itertools, json
g = [{'strategy': 'greedy', 'repetition_penalty': 1.0, 'no_repeat_ngram_size': 0, 'min_new_tokens': 0}]
g += [{'strategy': 'beam', 'repetition_penalty': r, 'no_repeat_ngram_size': n, 'min_new_tokens': m}
      for r, n, m in itertools.product([1.0, 0.8, 0.6, 0.5, 0.4], [0, 2, 3], [0, 8])]
print(json.dumps(g))")
python bench/summarize_decoding.py --workdir=$B/sum_b "$GRID" 2>&1 | grep -v WARNING \
  > $LOG/sum_decoding_validation.log
# The chosen setting is configs/summarize.py's default: eval.py reports it on test.
python eval.py --checkpoint=$B/sum_b --output=$LOG/sum_eval_test.json --config=configs/summarize.py \
  --config.init_checkpoint=$B/lm_gpt > $LOG/sum_eval_test.log 2>&1
# How much the summarizer reads its document (added later the same day, on the same workdir):
python bench/input_ablation.py --workdir=$B/sum_b 2>&1 | grep -v WARNING > $LOG/input_ablation.log
