"""Sequence classification. Offline default: which part of the Python docs (statements,
expressions, data model, built-in types, lexical analysis) a pydoc topic paragraph is from
(lm/tasks/data.py), on top of a train.py pretraining run:

  python train.py --config=configs/base.py --workdir=/tmp/lm_base
  python finetune.py --config=configs/finetune_cls.py --workdir=/tmp/ft_cls \
      --config.init_checkpoint=/tmp/lm_base
  python eval.py --checkpoint=/tmp/ft_cls   # the test split; --split=validation: selection's

Splits: train, validation (best/ and early stopping), test (eval.py), by a hash of each paragraph
(data.eval_fraction, data.test_fraction); none of the paragraphs is pretraining text.
GLUE from a prepared TFDS dir: --config.data.source=tfds --config.data.tfds_name=glue/sst2
  --config.data.data_dir=DIR (glue/mnli: --config.data.eval_split=validation_matched; GLUE's
  test labels are hidden, so test is hashed off train unless --config.data.test_split names one).
Local files: --config.data.source=files --config.data.files=train.tsv
  --config.data.eval_files=dev.tsv --config.data.test_files=test.tsv (label<TAB>text[<TAB>text_b],
  or JSONL; an unnamed one is hashed off the training files).
"""

from lm import defaults


def get_config():
  c = defaults.finetuning('classification')
  c.data.update(max_len=128)
  c.train.update(batch_size=32, steps=600, lr=1e-4, warmup_steps=60)
  c.pooling = 'mean'  # a short pretraining run's NSP pooler carries little; token states do
  c.early_stopping.update(metric='accuracy', mode='max', patience=5)
  c.update(eval_every=100, checkpoint_every=100, log_every=50)
  return c
