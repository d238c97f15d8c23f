"""The causal-LM default: a small GPT-2 on Python's bundled documentation, same size as base.py.

python train.py --config=configs/gpt_base.py --workdir=/tmp/lm_gpt
"""

from lm import defaults


def get_config():
  c = defaults.pretraining()
  c.objective = 'clm'
  c.model.update(
    hidden_size=128,
    num_layers=2,
    num_heads=4,
    mlp_dim=512,
    max_len=128,
    type_vocab_size=0,
    pre_ln=True,
    activation='gelu_tanh',
    layer_norm_eps=1e-5,
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
  )
  c.data.update(source='python_docs', seq_len=128)
  c.data.tokenizer.update(kind='bpe', vocab_size=8192)
  c.train.update(
    batch_size=32,
    steps=600,
    lr=1e-3,
    warmup_steps=60,
    schedule='cosine',
    weight_decay=0.1,
    b2=0.95,
    eps=1e-8,
    loss_chunk=1024,
  )  # fused linear + CE
  c.update(log_every=50, eval_every=200, eval_batches=8, checkpoint_every=200)
  c.sample_prompt = 'The assert statement'
  return c
