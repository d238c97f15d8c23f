"""Llama-style decoder: RMSNorm, SwiGLU, RoPE, grouped-query attention, untied head, no biases.

  python train.py --config=configs/llama.py --workdir=/tmp/lm_llama    # CPU default, minutes
  python train.py --config=configs/llama.py:1b --workdir=gs://... \\
      --config.data.tfds_name=lm1b --config.data.data_dir=gs://...   # paper sizes: TPU/GPU

The default is configs/gpt_base.py's job (causal LM on Python's docs, same data, tokenizer and
schedule) with the Llama block at about the same parameter count. The paper sizes have the
published shapes (an HF checkpoint of them loads with `lm.hf.import_pretrained` and fine-tunes
with `--config.init_checkpoint`); their tokenizer is trained on your corpus unless
`--config.data.tokenizer.path` names the model's own (tokenizer.json or tokenizer.model).
"""

from lm import defaults

SIZES = {  # size: (hidden, layers, heads, kv heads, mlp, vocab, rope theta, tied embeddings)
  'cpu': (128, 2, 4, 2, 352, 8192, 10000.0, False),
  '1b': (2048, 16, 32, 8, 8192, 128256, 500000.0, True),  # Llama 3.2 1B
  '7b': (4096, 32, 32, 32, 11008, 32000, 10000.0, False),  # Llama 2 7B (multi-head)
  '8b': (4096, 32, 32, 8, 14336, 128256, 500000.0, False),  # Llama 3 8B
}


def get_config(size='cpu'):
  d, layers, heads, kv_heads, mlp, vocab, theta, tied = SIZES[size]
  c = defaults.pretraining()
  c.objective = 'clm'
  c.model.update(
    hidden_size=d,
    num_layers=layers,
    num_heads=heads,
    num_kv_heads=kv_heads,
    mlp_dim=mlp,
    rope_theta=theta,
    tie_embeddings=tied,
    type_vocab_size=0,
    pre_ln=True,
    position='rope',
    norm='rmsnorm',
    mlp='swiglu',
    activation='silu',
    bias='none',
    layer_norm_eps=1e-5,
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
  )
  c.data.tokenizer.update(kind='bpe', vocab_size=vocab)
  if size == 'cpu':
    c.model.max_len = 128
    c.data.update(source='python_docs', seq_len=128)
    c.train.update(batch_size=32, steps=600, lr=1e-3, warmup_steps=60)
    c.update(log_every=50, eval_every=200, eval_batches=8, checkpoint_every=200)
    c.sample_prompt = 'The assert statement'
  else:
    if size == '1b':  # Llama 3.2 extends the 8k context with Llama-3 RoPE scaling
      c.model.update(rope_scaling='llama3', rope_factor=32.0, rope_original_max_len=8192)
    c.model.update(
      max_len=4096, dtype='bfloat16', remat='dots', attention_impl='auto', scan_layers=False
    )
    c.data.update(source='tfds', tfds_name='lm1b', seq_len=4096)
    c.train.update(batch_size=256, steps=500_000, lr=3e-4, warmup_steps=2000, end_lr_fraction=0.1)
    c.mesh_shape = (1, -1, 1)  # FSDP over every device
    c.update(log_every=100, eval_every=2000, checkpoint_every=2000)
  c.train.update(schedule='cosine', weight_decay=0.1, b2=0.95, eps=1e-8, loss_chunk=1024)
  return c
