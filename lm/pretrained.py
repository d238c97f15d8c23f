"""Loading any trained model: a workdir of any job, or a HuggingFace directory.

The loading order, written down once:
  1. `path` without checkpoints/ is an HF directory (config.json + weights): `lm.hf` converts it.
  2. A workdir's model record (`read_record`): the `record` in its latest checkpoint's metadata,
     written by every job (kind, head, model config, tokenizer file). Workdirs written before
     records existed are described from what they did save (`_legacy_record`).
  3. The model is `lm.models.build(record)`; its params, and nothing else, restore into the
     abstract params built from it (`jax.eval_shape` of its init): from best/ (the params chosen
     on validation: finetune.py and sft.py keep one) when `which='best'` and it holds a step,
     else the `params` subtree of checkpoints/ (the latest step, or `step`), read by orbax's
     partial restore, so the optimizer state is never read.
This module imports no job: a job is only a name in the record.
"""

import dataclasses
import json
import os
from typing import Any, Optional

import flax.linen as nn
import jax
import ml_collections

from lm import checkpoint
from lm import hf
from lm import models
from lm.models import lora
from lm import objectives
from lm import sharding
from lm.data import tokenizer as tokenizer_lib

HF_TOKENIZER_FILES = (
  'tokenizer.json',
  'tokenizer.model',
  'spiece.model',
  'vocab.txt',
  'vocab.json',
)
# What workdirs written before model records say about themselves: the `task` in their
# checkpoint metadata (none: train.py), or a finetune.json beside the checkpoints.
_LEGACY_TASKS = {
  'reward': ('dpo', 'reward'),
  'dpo': ('dpo', None),
  'ppo': ('ppo', 'value'),
}


@dataclasses.dataclass
class Pretrained:
  kind: str  # 'encoder' | 'decoder' | 'encoder-decoder' (T5): the body
  cfg: models.ModelConfig
  params: Any
  tokenizer: Optional[tokenizer_lib.Tokenizer]
  config: Optional[ml_collections.ConfigDict] = None  # the config of the job that wrote it
  step: Optional[int] = None
  job: Optional[str] = None  # pretrain, finetune, sft, dpo, ppo; None for an HF directory
  head: Optional[str] = None  # None (the body and its LM heads), 'task' or 'reward'
  head_args: dict = dataclasses.field(default_factory=dict)

  @property
  def model(self):
    return models.build(models.record(self.kind, self.cfg, self.head, **self.head_args))

  def body(self, path: str, use: str) -> 'Pretrained':
    """Self as a bare body (what generation and every job's start take), after checking it is
    one: a task or reward model is refused in one line naming what to do instead. A LoRA run's
    adapters are merged into its base (`lora.merge`): the next phase starts from the model
    the run produced, as a plain one."""
    if self.head is not None:
      raise ValueError(
        f'{path} is a {"fine-tuned task" if self.head == "task" else self.head} model '
        f'({self.job} job): evaluate it with eval.py --checkpoint={path}; {use} takes a '
        'train.py, sft.py, DPO or PPO workdir or an HF directory.'
      )
    if self.cfg.lora_rank or self.cfg.quant != 'none':
      return dataclasses.replace(
        self, cfg=lora.base_config(self.cfg), params=lora.merge(self.params, self.cfg)
      )
    return self


def is_workdir(path: str) -> bool:
  return os.path.isdir(os.path.join(path, 'checkpoints'))


def load(
  path: str,
  mesh=None,
  step: Optional[int] = None,
  which: str = 'best',
  param_dtype: Optional[str] = None,
) -> Pretrained:
  """Any workdir or an HF directory, params placed on `mesh` (default: all devices, data-
  parallel). A PPO workdir gives its policy (the value head is for training only).

  Only parameters are read, never a workdir's optimizer state; an HF directory is streamed
  tensor by tensor into the params' shardings (`lm.hf.import_pretrained`), its params in the
  stored dtype (bfloat16 safetensors give bfloat16 params) unless `param_dtype` says otherwise.
  A workdir's params keep the dtype they were trained in (`param_dtype` is refused there)."""
  if not os.path.exists(path):
    raise FileNotFoundError(
      f'{path} does not exist: pass a workdir of a job (train.py, finetune.py, sft.py, dpo.py, '
      'ppo.py) or a HuggingFace model directory (config.json + model.safetensors).'
    )
  if which not in ('best', 'latest'):
    raise ValueError(f"which={which!r}: use 'best' or 'latest'.")
  mesh = mesh or sharding.make_mesh((-1, 1, 1))
  if is_workdir(path):
    if param_dtype is not None:
      raise ValueError(
        f'param_dtype={param_dtype!r}: a workdir ({path}) loads in the dtype it was trained in.'
      )
    return _load_workdir(path, mesh, step, which)
  kind, cfg, params = hf.import_pretrained(
    path, mesh, **({'param_dtype': param_dtype} if param_dtype else {})
  )
  tok = None
  if any(os.path.exists(os.path.join(path, f)) for f in HF_TOKENIZER_FILES):
    tok = tokenizer_lib.from_hf_files(path)
  return Pretrained(models.kind_of(hf.SPECS[kind].module), cfg, params, tok)


def saved_config(workdir: str, step: Optional[int] = None) -> ml_collections.ConfigDict:
  return read_record(workdir, step)[2]


def read_record(workdir: str, step: Optional[int] = None) -> tuple[str, dict, Any]:
  """(job, model record, job config) of a workdir, reading no arrays."""
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), read_only=True)
  meta, _ = ckpt.read_meta(step)
  config = ml_collections.ConfigDict(json.loads(meta['config']))
  if 'pretrained' in config:  # dpo.py / ppo.py configs saved before the rename
    config.init_checkpoint = config['pretrained']
    del config['pretrained']
  if 'record' in meta:
    return meta['job'], meta['record'], config
  return _legacy_record(workdir, meta, config)


def job_of(workdir: str) -> Optional[str]:
  """The job that wrote `workdir` (from its record), or None: not a workdir or no checkpoint."""
  if not is_workdir(workdir):
    return None
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), read_only=True)
  return read_record(workdir)[0] if ckpt.latest_step() is not None else None


def _legacy_record(workdir: str, meta: dict, config) -> tuple[str, dict, Any]:
  """A workdir saved before model records: the same record, from what it did save."""
  finetune_json = os.path.join(workdir, 'finetune.json')
  if os.path.isfile(finetune_json):
    with open(finetune_json, encoding='utf-8') as f:
      info = json.load(f)
    cfg = models.config_from_dict(info['kind'], info['model'])
    n = len(info['labels']) if info['labels'] else 2
    args = dict(output=info['head'], num_outputs=n, pooling=info.get('pooling', 'pooler'))
    return 'finetune', models.record(info['kind'], cfg, 'task', **args), config
  task = meta.get('task')
  if task is None:  # train.py
    kind = objectives.KINDS[config.objective]
    if 'model' in meta:  # the exact model (a continued HF model keeps its unpadded vocab)
      cfg = models.config_from_dict(kind, meta['model'])
    else:
      tok = tokenizer_lib.Tokenizer.load(os.path.join(workdir, 'tokenizer.json'))
      cfg = objectives.model_config(config, tok.vocab_size)
    return 'pretrain', models.record(kind, cfg), config
  if task in _LEGACY_TASKS:
    job, head = _LEGACY_TASKS[task]
    if job == 'dpo':  # dpo.py's switch was config.task
      config.objective = config['task']
      del config['task']
    cfg = models.config_from_dict('decoder', meta['model'])
    return job, models.record('decoder', cfg, head), config
  kind = 'encoder-decoder' if 'd_kv' in meta['model'] else 'decoder'  # sft.py (a T5 has d_kv)
  return 'sft', models.record(kind, models.config_from_dict(kind, meta['model'])), config


def abstract_params(model, mesh, init_inputs):
  """Shapes, dtypes and shardings on `mesh` of `model`'s params, allocating nothing: a restore
  target for the params alone (`lm.trainer.abstract_state` is the whole train state's)."""
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *init_inputs))['params']
  shardings = sharding.to_shardings(sharding.logical_specs(boxed), mesh)
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(boxed), shardings
  )


def _load_workdir(workdir: str, mesh, step: Optional[int], which: str) -> Pretrained:
  job, rec, config = read_record(workdir, step)
  model = models.build(rec)
  target = abstract_params(model, mesh, models.init_inputs(rec, min(8, model.cfg.max_len)))
  best_dir = os.path.join(workdir, 'best')
  best = os.path.isdir(best_dir) and checkpoint.Checkpointer(best_dir, every=1, read_only=True)
  if which == 'best' and step is None and best and best.latest_step() is not None:
    params, _, got = best.restore(target)
  else:
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), read_only=True)
    params, _, got = ckpt.restore(target, step, subtree='params')
  tok = tokenizer_lib.Tokenizer.load(os.path.join(workdir, rec.get('tokenizer', 'tokenizer.json')))
  head, args = rec.get('head'), rec.get('head_args') or {}
  if head == 'value':  # a PPO policy: the actor-critic's decoder
    head, args, params = None, {}, params['decoder']
  return Pretrained(rec['kind'], model.cfg, params, tok, config, got, job, head, args)


def for_generation(path: str, use: str, tokenizer: Optional[str] = None):
  """(Pretrained decoder or encoder-decoder, tokenizer, eos id or None) from a workdir or an HF
  directory; `tokenizer` (a tokenizer.json or HF vocab files) replaces the one in `path`."""
  pre = load(path).body(path, use)
  if pre.kind == 'encoder':
    raise ValueError(f'{path} holds an encoder; generation needs a decoder or an encoder-decoder.')
  tok = tokenizer_lib.from_hf_files(tokenizer) if tokenizer else pre.tokenizer
  if tok is None:
    raise FileNotFoundError(f'no tokenizer in {path}: pass --tokenizer=tokenizer.json.')
  eos = tok.eos_id
  hf_config = os.path.join(path, 'config.json')
  if not is_workdir(path) and os.path.exists(hf_config):
    with open(hf_config, encoding='utf-8') as f:
      eos = json.load(f).get('eos_token_id', eos)
  if isinstance(eos, list):  # Llama 3.1 instruct lists several; the first ends a continuation
    eos = eos[0]
  return pre, tok, eos
