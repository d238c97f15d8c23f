"""Defaults every pretraining config shares; each file in configs/ states its own choices on top."""
import ml_collections
from ml_collections import config_dict


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.objective = 'mlm'        # 'mlm' (Encoder: MLM + NSP) | 'clm' (Decoder: causal LM)
  c.seed = 0
  c.mesh_shape = (-1, 1, 1)  # (data, fsdp, tensor); -1 takes the remaining devices

  c.model = ml_collections.ConfigDict(dict(
      hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072, max_len=512,
      type_vocab_size=2, position='learned', rope_theta=10000.0, pre_ln=False,
      activation='gelu', layer_norm_eps=1e-12, dropout_rate=0.1, attention_dropout_rate=0.1,
      initializer_range=0.02, dtype='float32', param_dtype='float32', scan_layers=False,
      remat='none', attention_impl='einsum'))

  c.data = ml_collections.ConfigDict()
  c.data.dataset = 'python_docs'  # 'python_docs' | 'text_files' | any TFDS text dataset name
  c.data.files = ''               # text_files: comma-separated paths or globs
  c.data.data_dir = config_dict.placeholder(str)  # TFDS data_dir
  c.data.split = 'train'
  c.data.text_key = 'text'
  c.data.max_documents = 0        # 0 = all
  c.data.eval_fraction = 0.05     # held-out documents (by a hash of their text)
  # Prepared token shards (lm/data/prepare.py); default: $LM_DATA_CACHE or ~/.cache/lm/prepared
  # under a name derived from this data config. Point every host at one shared path.
  c.data.prepared_dir = config_dict.placeholder(str)
  c.data.prepare_workers = -1     # tokenizing processes; -1: one per core (0 for small sources)
  c.data.shard_mb = 64.0          # text per shard
  c.data.seq_len = 128
  c.data.mlm_prob = 0.15
  c.data.nsp = True
  # Trained once per prepared corpus on a deterministic sample of at most sample_mb of text,
  # unless `path` names HF tokenizer files.
  c.data.tokenizer = ml_collections.ConfigDict(dict(kind='wordpiece', vocab_size=8192, path='',
                                                    sample_mb=64.0))

  c.train = ml_collections.ConfigDict(dict(
      batch_size=256, steps=100_000, lr=1e-4, warmup_steps=10_000, schedule='linear',
      end_lr_fraction=0.0, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6, clip_norm=1.0,
      grad_accum_steps=1, loss_chunk=0))

  c.log_every = 100
  c.eval_every = 1000
  c.eval_batches = 20
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.async_checkpoints = True
  c.sample_prompt = 'The assert statement'
  c.sample_tokens = 32
  return c
