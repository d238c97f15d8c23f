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


def log_rows(kind: str, step: int, rows, sources=None) -> None:
  """With LM_ROW_LOG=DIR, appends the data rows this process read for batch `step` of `kind`
  to DIR/<kind>.<process>.jsonl: how tests prove that processes read disjoint rows. `sources`
  (a data mixture's): each row's source name, logged beside it."""
  path = os.environ.get('LM_ROW_LOG')
  if not path:
    return
  import json  # pylint: disable=g-import-not-at-top

  line = {'step': int(step), 'rows': [int(r) for r in rows]}
  if sources is not None:
    line['sources'] = [str(s) for s in sources]
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, f'{kind}.{jax.process_index()}.jsonl'), 'a', encoding='utf-8') as f:
    f.write(json.dumps(line) + '\n')


def from_process_0(compute):
  """compute() run on process 0 only, its JSON-able result sent to every process (exactly:
  as JSON text), so a figure is computed once and every process decides on the same one."""
  if jax.process_count() == 1:
    return compute()
  import json  # pylint: disable=g-import-not-at-top

  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  as_json = lambda x: np.asarray(x).tolist()  # numpy scalars and arrays
  text = json.dumps(compute(), default=as_json).encode() if jax.process_index() == 0 else b''
  n = int(multihost_utils.broadcast_one_to_all(np.int32(len(text))))
  buf = np.zeros(n, np.uint8)
  buf[: len(text)] = np.frombuffer(text, np.uint8)
  return json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(buf))))
