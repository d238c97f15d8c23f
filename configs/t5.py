"""T5 v1.1 encoder-decoder pretrained by span corruption (`objective='span'`).

  python train.py --config=configs/t5.py --workdir=/tmp/lm_t5       # CPU default, minutes
  python train.py --config=configs/t5.py:small --workdir=gs://... \\
      --config.data.tfds_name=c4 --config.data.data_dir=gs://...   # paper sizes: TPU/GPU

The default is configs/gpt_base.py's data and tokenizer (Python's docs, BPE 8192) with a small
v1.1 block: gated-GELU MLP, untied lm_head, no dropout in pretraining (as T5 v1.1). Rows are
packed documents corrupted with T5's settings (noise density 0.15, mean span length 3): data.seq_len
encoder tokens from the raw window that fills it exactly, each span a sentinel id above the
tokenizer's. `small` and `base` have T5 v1.1's published shapes (77M and 248M parameters at its
32128-token vocabulary: BPE 32000 + 100 sentinels, padded to 32128 here too) and its 512 input
tokens.
"""

from lm import defaults

SIZES = {  # size: (d_model, d_kv, heads, d_ff, layers (each stack), vocab)
  'cpu': (128, 32, 4, 256, 2, 8192),
  'small': (512, 64, 6, 1024, 8, 32000),  # t5-v1_1-small
  'base': (768, 64, 12, 2048, 12, 32000),  # t5-v1_1-base
}


def get_config(size='cpu'):
  d, d_kv, heads, d_ff, layers, vocab = SIZES[size]
  c = defaults.pretraining()
  c.objective = 'span'
  c.model.update(
    hidden_size=d,
    num_heads=heads,
    mlp_dim=d_ff,
    num_layers=layers,
    max_len=512,  # unused: positions are relative
    type_vocab_size=0,
    pre_ln=True,
    position='relative',
    norm='rmsnorm',
    bias='none',
    mlp='gated',
    activation='gelu_tanh',
    tie_embeddings=False,
    layer_norm_eps=1e-6,
    initializer_range=1.0,  # T5's initializer_factor
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
  )
  # lm.t5.T5Config's own fields
  c.model.d_kv = d_kv
  c.model.num_decoder_layers = 0  # as many as the encoder
  c.model.relative_buckets = 32
  c.model.relative_max_distance = 128
  c.data.noise_density = 0.15
  c.data.mean_noise_span_length = 3.0
  c.data.num_sentinels = 100
  c.data.tokenizer.update(kind='bpe', vocab_size=vocab)
  if size == 'cpu':
    c.data.update(source='python_docs', seq_len=128)
    c.train.update(batch_size=32, steps=600, lr=3e-3, warmup_steps=60)
    c.update(log_every=50, eval_every=200, eval_batches=8, checkpoint_every=200)
  else:
    c.model.update(dtype='bfloat16')
    c.data.update(source='tfds', tfds_name='c4', seq_len=512)
    c.train.update(
      batch_size=128, steps=524_288, lr=1e-3, warmup_steps=10_000
    )  # AdamW, not Adafactor's 1e-2
    c.mesh_shape = (1, -1, 1)  # FSDP over every device
    c.update(log_every=100, eval_every=2000, checkpoint_every=2000)
  c.train.update(schedule='cosine', weight_decay=0.0)
  c.sample_prompt = 'The assert statement'
  c.sample_tokens = 16
  return c
