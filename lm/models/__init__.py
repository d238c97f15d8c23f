"""Model families (`Encoder`, `Decoder`, `T5`) and the heads jobs put on them, built by name.

A saved model is described by one record, `record(...)`: its kind (the body: 'encoder',
'decoder', 'encoder-decoder'), its head (None for the body with its own LM heads, 'task',
'reward', 'value') with the head's arguments, and the model config as a dict. `build(record)`
makes the module back from it, so a loader needs no job to rebuild any saved model.
"""

import dataclasses
from typing import Optional

from lm.models.config import ModelConfig, T5Config
from lm.models.decoder import Decoder
from lm.models.encoder import Encoder
from lm.models.heads import (
  ActorCritic,
  RewardModel,
  TaskModel,
  policy_init_inputs,
  reward_init_inputs,
  task_init_inputs,
)
from lm.models.t5 import T5

__all__ = [
  'ActorCritic',
  'Decoder',
  'Encoder',
  'ModelConfig',
  'RewardModel',
  'T5',
  'T5Config',
  'TaskModel',
  'body',
  'build',
  'config_from_dict',
  'init_inputs',
  'kind_of',
  'record',
]

KINDS = ('encoder', 'decoder', 'encoder-decoder')
HEADS = (None, 'task', 'reward', 'value')
_BODIES = {'encoder': Encoder, 'decoder': Decoder, 'encoder-decoder': T5}


def kind_of(module) -> str:
  """The kind of a body module (or of a body class)."""
  cls = module if isinstance(module, type) else type(module)
  for kind, body_cls in _BODIES.items():
    if issubclass(cls, body_cls):
      return kind
  raise ValueError(f'{cls.__name__} is not a model body: use one of {KINDS}.')


def config_from_dict(kind: str, d: dict) -> ModelConfig:
  return (T5Config if kind == 'encoder-decoder' else ModelConfig).from_dict(d)


def body(kind: str, cfg: ModelConfig):
  if kind not in _BODIES:
    raise ValueError(f'model kind {kind!r}: use one of {KINDS}.')
  return _BODIES[kind](cfg)


def record(kind: str, cfg: ModelConfig, head: Optional[str] = None, **head_args) -> dict:
  """The self-describing model record every job saves: `build(record)` makes the model again."""
  if kind not in _BODIES:
    raise ValueError(f'model kind {kind!r}: use one of {KINDS}.')
  if head not in HEADS:
    raise ValueError(f'head {head!r}: use one of {HEADS}.')
  return {'kind': kind, 'head': head, 'head_args': head_args, 'model': dataclasses.asdict(cfg)}


def build(rec: dict):
  """The module a record describes: the body, or the body inside its head."""
  kind, head, args = rec['kind'], rec.get('head'), rec.get('head_args') or {}
  cfg = config_from_dict(kind, rec['model'])
  if head is None:
    return body(kind, cfg)
  if head == 'task':
    return TaskModel(cfg, kind, args['output'], args['num_outputs'], args.get('pooling', 'pooler'))
  if kind != 'decoder':
    raise ValueError(f'a {head} head sits on a decoder, not an {kind}.')
  if head == 'reward':
    return RewardModel(cfg)
  if head == 'value':
    return ActorCritic(cfg)
  raise ValueError(f'head {head!r}: use one of {HEADS}.')


def init_inputs(rec: dict, length: int = 8):
  """Dummy inputs for `build(rec).init` (shapes only: no parameter depends on the length)."""
  if rec.get('head') == 'task':
    return task_init_inputs(length)
  if rec.get('head') == 'reward':
    return reward_init_inputs(length)
  return policy_init_inputs(length)
