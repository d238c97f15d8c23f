"""Extractive QA (SQuAD v1.1 style). Offline default: "What does <name> do?" over the help()
text of a group of stdlib functions/classes; the answer is that object's docstring summary
sentence, anywhere in a context of thousands of characters (doc-stride windows).

  python finetune.py --config=configs/finetune_qa.py --workdir=/tmp/ft_qa \
      --config.init_checkpoint=/tmp/lm_base
  python eval.py --checkpoint=/tmp/ft_qa   # the test split (best/ was chosen on validation)

SQuAD: --config.data.source=tfds --config.data.tfds_name=squad --config.data.data_dir=DIR, or
--config.data.source=files --config.data.files=train-v1.1.json --config.data.eval_files=...
[--config.data.test_files=...] (official JSON or SQuAD-style JSONL; a test split not named is
hashed off the training data by context).
"""

from lm import defaults


def get_config():
  c = defaults.finetuning('qa')
  c.data.update(max_len=128, max_query_len=24, doc_stride=64, max_answer_len=64, n_best=20)
  c.train.update(batch_size=32, steps=1000, lr=1e-4, warmup_steps=100)
  c.early_stopping.update(metric='f1', mode='max', patience=5)
  c.update(eval_every=200, checkpoint_every=200, log_every=50)
  return c
