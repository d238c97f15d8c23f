"""Supervised fine-tuning of a decoder on chat / prompt-response data (lm/sft.py).

python sft.py --config=configs/sft.py --workdir=/tmp/lm_sft --config.init_checkpoint=/tmp/lm_gpt
python sft.py --config=configs/sft.py --workdir=/tmp/lm_sft --config.init_checkpoint=/tmp/lm_gpt \
    --config.data.source=files --config.data.files=chats.jsonl  # {"messages": [...]} or prompt/response

Offline default: a chat asking what a stdlib callable does, answered by its docstring's first
paragraph (the downstream side of Python's docs).
"""

from lm import defaults


def get_config():
  c = defaults.text_to_text('sft')
  c.data.template = 'chat'
  c.data.update(seq_len=128, max_prompt_len=48)
  c.generate.update(strategy='greedy', max_new_tokens=64)
  return c
