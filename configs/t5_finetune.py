"""Text-to-text fine-tuning of a T5 (lm/sft.py): the input in the encoder, the target from the
decoder, the loss on the target tokens.

  python train.py --config=configs/t5.py --workdir=/tmp/lm_t5            # span corruption first
  python sft.py --config=configs/t5_finetune.py --workdir=/tmp/lm_t5_sum \\
      --config.init_checkpoint=/tmp/lm_t5                                 # offline summarization
  python sft.py --config=configs/t5_finetune.py:translate --workdir=/tmp/lm_t5_ende \\
      --config.init_checkpoint=DIR --config.data.source=files --config.data.files=pairs.jsonl \\
      --config.data.prompt_key=en --config.data.target_key=de        # or data.source=tfds
  python eval.py --checkpoint=/tmp/lm_t5_sum                        # test ROUGE / BLEU
  python generate.py --checkpoint=/tmp/lm_t5_sum --prompt="summarize: ..."

The task's data, held-out splits and eval.py report are configs/summarize.py's (and sft.py's);
the prompt carries T5's task prefix. The encoder reads data.max_prompt_len tokens, the decoder
data.seq_len - data.max_prompt_len. `--config.init=random` trains the same architecture from
scratch (the baseline for what span corruption is worth). The init checkpoint is a configs/t5.py
workdir, or an HF T5 directory with its spiece.model.
"""

from lm import defaults

PREFIX = {'summarize': 'summarize: {prompt}', 'translate': 'translate: {prompt}'}


def get_config(task='summarize'):
  c = defaults.text_to_text(task)
  if task in PREFIX:
    c.data.update(template='plain', prompt_format=PREFIX[task])
  c.data.update(seq_len=128, max_prompt_len=96)  # encoder 96 tokens, decoder 32
  # 1000 steps, best/ by validation loss (bench/logs/t5_2026-11-26/): from configs/t5.py the
  # lowest is 5.14 at step 400 (a 300-step schedule ended at 5.24, lr 3e-4 at 5.52), from random
  # init 5.38 at step 300; both overfit the 495 training examples after.
  c.train.update(lr=1e-3, steps=1000, warmup_steps=100)
  # Chosen on validation ROUGE-L over 12 settings (bench/logs/t5_2026-11-26/): greedy, no
  # repeated bigram, at least 8 tokens; beam search and summarize.py's repetition penalty below 1
  # (a copy bias for a decoder, whose penalty covers the prompt) scored lower.
  c.generate.update(strategy='greedy', max_new_tokens=32, no_repeat_ngram_size=2, min_new_tokens=8)
  return c
