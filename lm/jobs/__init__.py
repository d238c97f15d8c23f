"""The jobs, one module each, picked by name (as big_vision's `evaluators/common.py:from_config`
imports the module a config names).

Each job module has `run(config, workdir)` (its entry point's whole job) and
`evaluate(path, config=None, split='test', which='best', max_examples=0, num_batches=None,
mesh=None) -> (results, predictions or None)` (eval.py on a workdir it wrote). The job that wrote
a workdir is read from its model record (`lm.pretrained.job_of`), never guessed. Nothing below
`lm/jobs` imports this package: jobs sit on top of the library.
"""

import importlib

JOBS = ('pretrain', 'finetune', 'sft', 'dpo', 'ppo')


def get(name: str):
  """The module of job `name`."""
  if name not in JOBS:
    raise ValueError(f'job {name!r}: use one of {JOBS}.')
  return importlib.import_module(f'lm.jobs.{name}')
