"""Summarization with the decoder as a prefix LM (lm/sft.py): loss on the summary only.

python sft.py --config=configs/summarize.py --workdir=/tmp/lm_sum --config.init_checkpoint=/tmp/lm_gpt
python sft.py --config=configs/summarize.py --workdir=/tmp/lm_xsum --config.init_checkpoint=DIR \
    --config.data.source=tfds --config.data.tfds_name=xsum --config.data.data_dir=~/tensorflow_datasets

Offline default: a stdlib docstring's body -> its PEP 257 summary line, from the modules the
pretraining corpus leaves out. eval.py reports ROUGE/BLEU and the lead-sentence baseline.
"""

from lm import defaults


def get_config():
  c = defaults.text_to_text('summarize')
  c.data.update(template='plain', prompt_format='{prompt}\nTL;DR:', seq_len=128, max_prompt_len=96)
  # Chosen on validation ROUGE-L (bench/summarize_decoding.py, bench/logs/sft_2026-11-26b/):
  # a repetition penalty below 1 favours the document's words (HF's penalty covers the prompt),
  # no repeated bigram keeps it from looping, and at least 8 tokens stop 'Return a string.'.
  c.generate.update(
    strategy='beam',
    num_beams=4,
    max_new_tokens=32,
    repetition_penalty=0.5,
    no_repeat_ngram_size=2,
    min_new_tokens=8,
  )
  return c
