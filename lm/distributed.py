"""Multi-host start-up: one call, before any other JAX call, on every process."""

import os

import jax


def initialize():
  """Joins the other processes of a multi-host job, or does nothing for one process.

  Explicit: LM_COORDINATOR=host:port, LM_NUM_PROCESSES, LM_PROCESS_ID (tests, bare clusters).
  Otherwise JAX's own detection covers TPU VM pods and SLURM/Open MPI GPU clusters when
  LM_DISTRIBUTED=1 is set.
  """
  if os.environ.get('LM_COORDINATOR'):
    jax.distributed.initialize(
      coordinator_address=os.environ['LM_COORDINATOR'],
      num_processes=int(os.environ['LM_NUM_PROCESSES']),
      process_id=int(os.environ['LM_PROCESS_ID']),
      initialization_timeout=int(os.environ.get('LM_INIT_TIMEOUT', 300)),
    )
  elif os.environ.get('LM_DISTRIBUTED') == '1':
    jax.distributed.initialize()


def log_rows(kind: str, step: int, rows) -> None:
  """With LM_ROW_LOG=DIR, appends the data rows this process read for batch `step` of `kind`
  to DIR/<kind>.<process>.jsonl: how tests prove that processes read disjoint rows."""
  path = os.environ.get('LM_ROW_LOG')
  if not path:
    return
  import json  # pylint: disable=g-import-not-at-top

  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, f'{kind}.{jax.process_index()}.jsonl'), 'a', encoding='utf-8') as f:
    f.write(json.dumps({'step': int(step), 'rows': [int(r) for r in rows]}) + '\n')
