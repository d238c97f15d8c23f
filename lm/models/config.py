"""Model configs: `ModelConfig` (BERT / GPT-2 / Llama / Mistral / Qwen2 by its options) and
`T5Config` (the same fields at T5's values plus what only T5 has). Frozen dataclasses, so a
config is a static jit argument and is saved as a plain dict in every model record."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  max_len: int = 512
  type_vocab_size: int = 2  # segment (token type) embeddings; 0 disables them
  position: str = 'learned'  # 'learned' | 'rope'
  rope_theta: float = 10000.0
  # RoPE frequency scaling for longer contexts: 'none' | 'linear' (positions / rope_factor) |
  # 'llama3' (low frequencies / rope_factor, high ones kept, a smooth ramp between, by
  # wavelength against rope_original_max_len / the low and high freq factors)
  rope_scaling: str = 'none'
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_len: int = 8192
  num_kv_heads: int = 0  # grouped-query attention (1: multi-query); 0 = num_heads
  sliding_window: int = 0  # each query sees only the last `sliding_window` keys (Mistral); 0 = all
  pre_ln: bool = False  # False: BERT post-LN; True: GPT-2 pre-LN
  norm: str = 'layernorm'  # 'layernorm' | 'rmsnorm' (Llama: no mean, no bias)
  mlp: str = 'dense'  # 'dense' (act(x W_i) W_o) | 'swiglu' (Llama: (silu(x W_gate) * x W_i) W_o)
  bias: str = 'all'  # 'all' | 'none' (Llama, Mistral) | 'qkv' (Qwen2: query/key/value only)
  tie_embeddings: bool = True  # Decoder: logits from the token embedding; False: an lm_head
  activation: str = 'gelu'  # 'gelu' (erf, BERT) | 'gelu_tanh' (GPT-2 "gelu_new") | 'silu'
  layer_norm_eps: float = 1e-12
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  initializer_range: float = 0.02
  dtype: str = 'float32'  # compute dtype; parameters stay in param_dtype
  param_dtype: str = 'float32'
  scan_layers: bool = False  # one compiled layer body: compile time flat in depth
  remat: str = 'none'  # 'none' | 'full' | 'dots' (save matmul outputs only)
  # 'einsum' | 'xla' | 'cudnn' (jax.nn.dot_product_attention) | 'auto': cudnn flash attention
  # on a GPU in bf16/fp16, else xla | 'splash' (TPU) | 'flash' (GPU): Pallas kernels, lm/models/kernels.py
  attention_impl: str = 'einsum'
  # attention over a sequence sharded on a `context` mesh axis (lm/models/context_parallel.py):
  # 'ring' (key/value blocks passed round the axis, online softmax) | 'allgather'
  context_parallel: str = 'ring'
  # LoRA / QLoRA (lm/models/lora.py), set by a job's `lora` block: adapters of this rank on the
  # comma-separated targets (q, k, v, o, mlp_in, mlp_out), scaled alpha / rank; quant 'int8' |
  # 'nf4' stores the frozen attention and MLP kernels quantized.
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_dropout: float = 0.0
  lora_targets: str = 'q,k,v,o,mlp_in,mlp_out'
  quant: str = 'none'

  @classmethod
  def from_dict(cls, d) -> 'ModelConfig':
    d = dict(d)
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(
        f'Unknown model config keys {sorted(unknown)}; valid keys: '
        f'{sorted(f.name for f in dataclasses.fields(cls))}.'
      )
    return cls(**d)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads


@dataclasses.dataclass(frozen=True)
class T5Config(ModelConfig):
  """`ModelConfig` at T5's values plus what only T5 has; `num_layers` counts encoder layers."""

  vocab_size: int = 32128
  hidden_size: int = 512
  num_layers: int = 6
  num_heads: int = 8
  mlp_dim: int = 2048
  d_kv: int = 64  # head size (d_kv * num_heads need not be hidden_size)
  num_decoder_layers: int = 0  # 0: as many as the encoder
  relative_buckets: int = 32
  relative_max_distance: int = 128
  position: str = 'relative'
  type_vocab_size: int = 0
  pre_ln: bool = True
  norm: str = 'rmsnorm'
  bias: str = 'none'
  activation: str = 'relu'  # v1.1: 'gelu_tanh' with mlp='gated'
  mlp: str = 'dense'  # 'dense' | 'gated'
  tie_embeddings: bool = True  # v1.0; v1.1 has an untied lm_head
  layer_norm_eps: float = 1e-6
  initializer_range: float = 1.0  # T5's initializer_factor
  attention_dropout_rate: float = 0.0

  @property
  def head_dim(self) -> int:
    return self.d_kv

  @property
  def decoder_layers(self) -> int:
    return self.num_decoder_layers or self.num_layers

  def __post_init__(self):
    bad = [
      f'{k}={getattr(self, k)!r} (T5 needs {v!r})'
      for k, v in dict(
        position='relative', pre_ln=True, norm='rmsnorm', bias='none', type_vocab_size=0,
        num_kv_heads=0, sliding_window=0,
      ).items()
      if getattr(self, k) != v
    ]  # fmt: skip
    if self.mlp not in ('dense', 'gated'):
      bad.append(f"mlp={self.mlp!r} (T5 has 'dense' or 'gated')")
    if bad:
      raise ValueError(f'Unsupported T5Config: {"; ".join(bad)}.')
