"""Loading a trained model for fine-tuning, evaluation and generation.

Two sources look the same to callers: a workdir of our `train.py` (config from the
checkpoint's metadata, tokenizer.json beside it, params from orbax onto any mesh), or a
HuggingFace BERT / GPT-2 / Llama / Mistral / Qwen2 directory (config.json + weights, converted by `lm.hf`).
"""

import dataclasses
import json
import os
from typing import Any, Optional

import ml_collections

from lm import checkpoint
from lm import model as M
from lm import objectives
from lm import optim
from lm import sharding
from lm import trainer
from lm.data import tokenizer as tokenizer_lib


@dataclasses.dataclass
class Pretrained:
  kind: str  # 'encoder' | 'decoder' | 'encoder-decoder' (T5)
  cfg: M.ModelConfig
  params: Any
  tokenizer: Optional[tokenizer_lib.Tokenizer]
  config: Optional[ml_collections.ConfigDict] = None  # the pretraining config, for our runs
  step: Optional[int] = None

  @property
  def model(self):
    if self.kind == 'encoder-decoder':
      from lm import t5  # pylint: disable=g-import-not-at-top

      return t5.T5(self.cfg)
    return M.Encoder(self.cfg) if self.kind == 'encoder' else M.Decoder(self.cfg)


def is_workdir(path: str) -> bool:
  return os.path.isdir(os.path.join(path, 'checkpoints'))


def load(path: str, mesh=None, step: Optional[int] = None) -> Pretrained:
  """Loads our workdir or an HF directory; params are placed on `mesh` (default: all devices)."""
  if not os.path.exists(path):
    raise FileNotFoundError(
      f'{path} does not exist: pass a train.py --workdir or a HuggingFace '
      'model directory (config.json + model.safetensors).'
    )
  mesh = mesh or sharding.make_mesh((-1, 1, 1))
  if is_workdir(path):
    return _load_workdir(path, mesh, step)
  from lm import hf  # pylint: disable=g-import-not-at-top

  kind, cfg, params = hf.import_pretrained(path)
  module = hf.SPECS[kind].module
  kind = (
    'encoder' if module is M.Encoder else 'decoder' if module is M.Decoder else 'encoder-decoder'
  )
  tok = None
  if any(
    os.path.exists(os.path.join(path, f))
    for f in ('tokenizer.json', 'tokenizer.model', 'spiece.model', 'vocab.txt', 'vocab.json')
  ):
    tok = tokenizer_lib.from_hf_files(path)
  return Pretrained(kind, cfg, params, tok)


def saved_config(workdir: str, step: Optional[int] = None) -> ml_collections.ConfigDict:
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), read_only=True)
  meta, _ = ckpt.read_meta(step)
  return ml_collections.ConfigDict(json.loads(meta['config']))


def _load_workdir(workdir: str, mesh, step: Optional[int]) -> Pretrained:
  """A train.py workdir, or an sft.py / dpo.py / ppo.py one holding an SFT / DPO / PPO policy
  (a decoder); finetune.py's task models and dpo.py's reward models are refused on one line."""
  if os.path.isfile(os.path.join(workdir, 'finetune.json')):
    raise ValueError(
      f'{workdir} is a fine-tuned task model (finetune.py): evaluate it with eval.py '
      f'--checkpoint={workdir}; generation and init_checkpoint take a train.py, sft.py, dpo.py '
      '(DPO) or ppo.py workdir or an HF directory.'
    )
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), read_only=True)
  meta, _ = ckpt.read_meta(step)
  from lm import sft  # pylint: disable=g-import-not-at-top

  if meta.get('task') in sft.TASKS:  # sft.py: the fine-tuned decoder or T5 (best/)
    return sft.load(workdir, mesh)
  if 'task' in meta:  # dpo.py or ppo.py
    if meta['task'] not in ('dpo', 'ppo'):
      raise ValueError(
        f'{workdir} is a reward model (dpo.py, task={meta["task"]!r}): it scores text and does '
        f'not generate; evaluate it with eval.py --checkpoint={workdir}, or pass a train.py or '
        'DPO / PPO workdir.'
      )
    from lm import rlhf  # pylint: disable=g-import-not-at-top

    _, model, params, tok, got = rlhf.load_finetuned(workdir, mesh, step)
    return Pretrained('decoder', model.cfg, params, tok, None, got)
  config = ml_collections.ConfigDict(json.loads(meta['config']))
  tok = tokenizer_lib.Tokenizer.load(os.path.join(workdir, 'tokenizer.json'))
  model = objectives.make_model(config, tok.vocab_size)
  if 'model' in meta:  # the exact model (a continued HF model keeps its unpadded vocab)
    model = type(model)(type(model.cfg).from_dict(meta['model']))
  target = trainer.abstract_state(
    model, optim.make(config.train), mesh, objectives.init_inputs(config)
  )
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), read_only=True)
  state, _, got = ckpt.restore(target, step)
  kind = {'mlm': 'encoder', 'clm': 'decoder', 'span': 'encoder-decoder'}[config.objective]
  return Pretrained(kind, model.cfg, state.params, tok, config, got)
