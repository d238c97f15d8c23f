"""Token classification. Offline default: in help()-style text of stdlib functions/classes,
tag each word NAME (the object's own name), PARAM (one of its parameters) or O.

  python finetune.py --config=configs/finetune_tokens.py --workdir=/tmp/ft_tok \
      --config.init_checkpoint=/tmp/lm_base
  python eval.py --checkpoint=/tmp/ft_tok   # the test split (best/ was chosen on validation)

CoNLL-style local files: --config.data.source=files --config.data.files=train.conll
  --config.data.eval_files=dev.conll --config.data.test_files=test.conll; TFDS: --config.data.source=tfds
  --config.data.tfds_name=conll2003 --config.data.data_dir=DIR.
Metrics: word accuracy and macro P/R/F1 over the non-O tags.
"""

from lm import defaults


def get_config():
  c = defaults.finetuning('tokens')
  c.data.update(max_len=128)
  c.train.update(batch_size=32, steps=600, lr=1e-4, warmup_steps=60)
  c.early_stopping.update(metric='f1', mode='max', patience=5)
  c.update(eval_every=100, checkpoint_every=100, log_every=50)
  return c
