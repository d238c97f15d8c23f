"""The one place logical axis names meet the device mesh.

Parameters and activations are annotated with logical names in `lm.model`; `RULES`
maps them onto the mesh axes `data` (pure data parallel), `fsdp` (data parallel with
parameters and optimizer state sharded), `tensor` (Megatron-style model parallel) and
`context` (the sequence of every activation split across devices; attention then runs
`lm.models.context_parallel`'s ring or all-gather schedule).
"""

import contextlib
import functools
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor', 'context')

RULES = (
  # parameters
  ('vocab', 'tensor'),
  ('embed', ('fsdp', 'context')),  # a context axis also shards the state, as FSDP does
  ('mlp', 'tensor'),
  ('heads', 'tensor'),
  ('kv_heads', 'tensor'),  # grouped-query K/V: whole kv heads per device when they divide
  ('position', None),
  ('type_vocab', None),
  ('classes', None),
  ('layers', None),
  ('relpos_buckets', None),  # T5's relative-position bias table [buckets, heads]: tiny
  ('relpos_heads', None),
  ('lora_rank', None),  # LoRA adapters: the adapted kernel's other axis shards them
  ('quant_block', None),  # QLoRA: absmax scales per column (int8) or per block of rows (NF4)
  # activations
  ('batch', ('data', 'fsdp')),
  ('act_length', 'context'),
  ('act_embed', None),
  ('act_heads', 'tensor'),
  ('act_kv_heads', 'tensor'),
  ('act_kv', None),
  ('act_mlp', 'tensor'),
)


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices=None) -> Mesh:
  """A (data, fsdp, tensor, context) mesh from 3 entries (context 1) or 4; one entry may be -1
  to take the remaining devices."""
  devices = list(jax.devices() if devices is None else devices)
  shape = list(shape)
  if len(shape) not in (3, 4) or shape.count(-1) > 1:
    raise ValueError(
      f'mesh shape {tuple(shape)} must be (data, fsdp, tensor[, context]) with at most one -1.'
    )
  given, shape = tuple(shape), shape + [1] * (4 - len(shape))
  if -1 in shape:
    rest = int(np.prod([s for s in shape if s != -1]))
    if len(devices) % rest:
      raise ValueError(f'{len(devices)} devices do not divide into mesh {given}.')
    shape[shape.index(-1)] = len(devices) // rest
  if int(np.prod(shape)) != len(devices):
    raise ValueError(
      f'mesh {given} needs {int(np.prod(shape))} devices, '
      f'have {len(devices)}: set --config.mesh_shape so the product matches.'
    )
  # Auto axes: XLA propagates shardings from our constraints (Explicit mode would assert).
  return jax.make_mesh(
    tuple(shape),
    MESH_AXES,
    devices=devices,
    axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
  )


@contextlib.contextmanager
def use(mesh: Mesh, rules=RULES):
  """Mesh + logical rules in scope, so activation constraints in the model take effect."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def with_mesh(fn, mesh: Mesh):
  """`fn` called with `mesh` and the rules in scope (jit traces there, so constraints apply)."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with use(mesh):
      return fn(*args, **kwargs)

  return wrapped


def logical_specs(boxed_tree):
  """Logical PartitionSpecs of a tree of `nn.LogicallyPartitioned` boxes (from init)."""
  return nn.get_partition_spec(boxed_tree)


def to_shardings(logical_spec_tree, mesh: Mesh, rules=RULES):
  """NamedShardings on `mesh` for a tree of logical PartitionSpecs."""
  return nn.logical_to_mesh_sharding(logical_spec_tree, mesh, rules)


def init_sharded(init_fn, mesh: Mesh, *args, rules=RULES):
  """Runs `init_fn(*args)` (a Flax init returning boxed variables) straight into sharded
  memory: no host ever holds the whole unsharded model. Returns (variables, shardings)."""
  abstract = jax.eval_shape(init_fn, *args)
  shardings = to_shardings(logical_specs(abstract), mesh, rules)
  with use(mesh, rules):
    variables = jax.jit(lambda *a: nn.unbox(init_fn(*a)), out_shardings=shardings)(*args)
  return variables, shardings


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over data and fsdp; the rest replicated."""
  return NamedSharding(mesh, P(('data', 'fsdp')))


def shard_batch(local_batch, mesh: Mesh):
  """Assembles each process's slice of the global batch into global jax.Arrays."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
  )


def process_rows(batch_size: int, mesh: Mesh) -> slice:
  """This process's rows of a global batch: the contiguous block `shard_batch` places on its
  devices (read off the batch sharding), so every process reads only its own rows and the
  assembled global batch is the one a single process would build."""
  index = batch_sharding(mesh).addressable_devices_indices_map((batch_size,))
  blocks = sorted({s[0].indices(batch_size)[:2] for s in index.values()})
  lo, hi = blocks[0][0], blocks[-1][1]
  if sum(b - a for a, b in blocks) != hi - lo:
    raise ValueError(
      f'this process holds rows {blocks} of the batch, not one block: order the mesh devices '
      'process by process (jax.devices() order does).'
    )
  return slice(lo, hi)


def gather(x):
  """A (possibly batch-sharded) global array or tree as numpy, whole on every process."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, x)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  return multihost_utils.process_allgather(x, tiled=True)


def config_mesh(config):
  """The mesh a job's config names (`mesh_shape`, `num_devices`), so evaluation shards as the
  job did; all devices data-parallel without one, or when it does not fit this machine (a run
  trained on a pod slice, evaluated on a laptop), said once."""
  shape = tuple(config.get('mesh_shape', (-1, 1, 1))) if config is not None else (-1, 1, 1)
  n = int(config.get('num_devices', 0) or 0) if config is not None else 0
  if n <= jax.device_count():
    try:
      return make_mesh(shape, jax.devices()[:n] if n else None)
    except ValueError as e:
      reason = str(e).split(':')[0].rstrip('.')
  else:
    reason = f'the job ran on {n} devices'
  print(f'evaluation: {reason}; using all {jax.device_count()} devices data-parallel instead')
  return make_mesh((-1, 1, 1))


def placed(params, mesh):
  """Params on `mesh`: a workdir's are placed already, an HF directory's (numpy) replicated."""
  return jax.tree.map(
    lambda x: x if isinstance(x, jax.Array) else jax.device_put(x, NamedSharding(mesh, P())),
    params,
  )
