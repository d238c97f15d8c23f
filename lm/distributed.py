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
