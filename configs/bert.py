"""BERT-base (110M) and BERT-large (340M), Devlin et al. 2019, seq-128 phase. For TPU/GPU.

  python train.py --config=configs/bert.py:large --workdir=gs://... \
      --config.data.tfds_name=wikipedia/20230601.en --config.data.data_dir=gs://...
"""

from lm import defaults

SIZES = {  # size: (hidden, layers, heads, mesh)
  'base': (768, 12, 12, (-1, 1, 1)),
  'large': (1024, 24, 16, (1, -1, 1)),  # FSDP: params and Adam state sharded
}


def get_config(size='base'):
  d, layers, heads, mesh = SIZES[size]
  c = defaults.pretraining()
  c.objective = 'mlm'
  c.model.update(
    hidden_size=d,
    num_layers=layers,
    num_heads=heads,
    mlp_dim=4 * d,
    max_len=512,
    dtype='bfloat16',
    scan_layers=True,
    remat='dots',
  )
  c.data.update(source='tfds', tfds_name='wikipedia/20230601.en', seq_len=128, nsp=True)
  c.data.tokenizer.update(kind='wordpiece', vocab_size=30522)
  c.train.update(
    batch_size=256,
    steps=1_000_000,
    lr=1e-4,
    warmup_steps=10_000,
    schedule='linear',
    weight_decay=0.01,
    eps=1e-6,
  )
  c.mesh_shape = mesh
  c.update(log_every=100, eval_every=5000, checkpoint_every=5000)
  return c
