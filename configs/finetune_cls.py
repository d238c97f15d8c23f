"""Sequence classification. Offline default: which part of the Python docs (statements,
expressions, data model, built-in types, lexical analysis) a pydoc topic paragraph is from
(lm/tasks/data.py), on top of a train.py pretraining run:

  python train.py --config=configs/base.py --workdir=/tmp/lm_base
  python finetune.py --config=configs/finetune_cls.py --workdir=/tmp/ft_cls \
      --config.init_checkpoint=/tmp/lm_base
  python eval.py --checkpoint=/tmp/ft_cls

GLUE from a prepared TFDS dir: --config.data.source=tfds --config.data.tfds_name=glue/sst2
  --config.data.data_dir=DIR (glue/mnli: --config.data.eval_split=validation_matched).
Local files: --config.data.source=files --config.data.files=train.tsv
  --config.data.eval_files=dev.tsv (label<TAB>text[<TAB>text_b], or JSONL).
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
