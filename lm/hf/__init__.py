"""HuggingFace interop: BERT (`BertForPreTraining`), GPT-2 (`GPT2LMHeadModel`), the Llama
family (`LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`) and T5
(`T5ForConditionalGeneration`) checkpoints.

The API callers use, assembled here so that neither half knows the other: `core` holds the
generic converter (rules, checks, files), each family module (`bert`, `gpt2`, `llama`, `t5`) its
own `Spec` beside it, and `SPECS` maps each HF `model_type` to one. `peft` moves LoRA adapters to
and from PEFT's adapter format and writes merged exports, on any family's table.
"""

from lm.hf.bert import BERT, bert_from_hf, bert_to_hf
from lm.hf.core import (
  LINEAR,
  QKV,
  SAME,
  SPECS,
  Codec,
  Rule,
  Spec,
  StateDict,
  canonical,
  config_from_hf,
  config_to_hf,
  export_pretrained,
  from_hf,
  import_pretrained,
  load_state_dict,
  module,
  to_hf,
)
from lm.hf.gpt2 import GPT2, gpt2_from_hf, gpt2_to_hf
from lm.hf.llama import LLAMA, MISTRAL, QWEN2
from lm.hf.peft import export_merged, load_adapter, model_type_of, save_adapter
from lm.hf.t5 import T5

SPECS.update(bert=BERT, gpt2=GPT2, llama=LLAMA, mistral=MISTRAL, qwen2=QWEN2, t5=T5)

__all__ = [
  'BERT',
  'GPT2',
  'LINEAR',
  'LLAMA',
  'MISTRAL',
  'QKV',
  'QWEN2',
  'SAME',
  'SPECS',
  'T5',
  'Codec',
  'Rule',
  'Spec',
  'StateDict',
  'bert_from_hf',
  'bert_to_hf',
  'canonical',
  'config_from_hf',
  'config_to_hf',
  'export_merged',
  'export_pretrained',
  'from_hf',
  'gpt2_from_hf',
  'gpt2_to_hf',
  'import_pretrained',
  'load_adapter',
  'load_state_dict',
  'model_type_of',
  'module',
  'save_adapter',
  'to_hf',
]
