"""The embedded default: a small BERT (MLM + NSP) on Python's bundled documentation.

Runs offline on a laptop CPU in a few minutes and shows the loss falling.
  python train.py --config=configs/base.py --workdir=/tmp/lm_base
"""

from lm import defaults


def get_config():
  c = defaults.pretraining()
  c.objective = 'mlm'
  c.model.update(
    hidden_size=128,
    num_layers=2,
    num_heads=4,
    mlp_dim=512,
    max_len=128,
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
  )
  c.data.update(source='python_docs', seq_len=128, nsp=True)
  c.data.tokenizer.update(kind='wordpiece', vocab_size=8192)
  c.train.update(
    batch_size=32, steps=600, lr=1e-3, warmup_steps=60, schedule='linear', weight_decay=0.01
  )
  c.update(log_every=50, eval_every=200, eval_batches=8, checkpoint_every=200)
  c.sample_prompt = 'the assert statement is a convenient way to [MASK] debugging assertions'
  return c
