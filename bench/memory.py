r"""Bytes per device of the train state, and the compiled train step's peak, for each mesh.

  python bench/memory.py             # BERT base/large, GPT-2 small/medium, T5 v1.1 small/base
  python bench/memory.py --configs=gpt2.py:small --meshes=1,1,1:1,8,1 --peak=0   # quick

Runs on 8 simulated CPU devices (it sets XLA_FLAGS itself). For each paper-size config and
mesh (data, fsdp, tensor) it reports, per device:
  * state: params + AdamW moments (+ step), from the shardings `lm.sharding.RULES` gives the
    abstract state (`lm.trainer.abstract_state`): the bytes of each leaf's shard on one
    device, summed; nothing is allocated, so paper sizes fit;
  * peak: XLA's memory analysis of the compiled train step (`lm.objectives.make_train_step`,
    the step train.py runs) on a global batch of one row per device at the config's seq_len
    (T5: seq_len encoder tokens and the span batcher's target length):
    arguments + outputs - aliased (donated) + temporaries. Layers are scanned for this column
    only (compile time flat in depth; an unrolled stack's temporaries differ little).
The baseline is the same config on one device; the ratio columns are per-device state / (the
1-device state / N), so 1.00 is a perfect 1/N split (the target under full FSDP is <= 1.10), and
the same against 1/(fsdp*tensor), the share a mesh that replicates over `data` can reach.
"""

import argparse
import os
import sys
import time

os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import config_flags  # noqa: E402, F401  (config files import it)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, 'bench')]

from lm import objectives  # noqa: E402
from lm import optim  # noqa: E402
from lm import sharding  # noqa: E402
from lm import trainer  # noqa: E402
from lm.data import span  # noqa: E402
from train_throughput import synthetic_batch  # noqa: E402

# the tokenizer's vocab per objective (T5: 32000 BPE + 100 sentinels, padded to 32128)
VOCAB = {'mlm': 30522, 'clm': 50257, 'span': 32000}


def load_config(spec: str):
  """'gpt2.py:small' -> configs/gpt2.py's get_config('small')."""
  import importlib.util  # noqa: PLC0415

  path, _, arg = spec.partition(':')
  s = importlib.util.spec_from_file_location('cfg', os.path.join(ROOT, 'configs', path))
  module = importlib.util.module_from_spec(s)
  s.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def state_bytes_per_device(abstract) -> int:
  """Largest per-device total over devices of the shards of every leaf (shards are even)."""
  total = 0
  for leaf in jax.tree.leaves(abstract):
    shard = leaf.sharding.shard_shape(leaf.shape)
    total += int(np.prod(shard)) * leaf.dtype.itemsize
  return total


def train_batch(config, rows: int) -> dict:
  """A global batch with the fields, dtypes and shapes the config's batcher gives."""
  t, vocab = config.data.seq_len, VOCAB[config.objective]
  if config.objective == 'span':  # SpanBatcher: seq_len encoder tokens, raw_length's targets
    d = config.data
    _, targets = span.raw_length(t, d.noise_density, d.mean_noise_span_length)
    ids = lambda n: np.zeros((rows, n), np.int32)
    return dict(input_ids=ids(t), decoder_input_ids=ids(targets), targets=ids(targets))
  return synthetic_batch('bert' if config.objective == 'mlm' else 'gpt', rows, t, vocab)


def peak_bytes(config, model, tx, abstract, mesh) -> int:
  state_sh = jax.tree.map(lambda x: x.sharding, abstract)
  step = objectives.make_train_step(config, model, tx, state_sh, mesh)
  batch = train_batch(config, mesh.devices.size)
  bsh = sharding.batch_sharding(mesh)
  abstract_batch = {
    k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=bsh) for k, v in batch.items()
  }
  with sharding.use(mesh):  # the jitted step under with_mesh's wrapper
    compiled = step.__wrapped__.lower(abstract, abstract_batch).compile()
  m = compiled.memory_analysis()
  return (
    m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
  )


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument(
    '--configs',
    default='bert.py:base,bert.py:large,gpt2.py:small,gpt2.py:medium,t5.py:small,t5.py:base',
  )
  p.add_argument('--meshes', default='1,1,1:8,1,1:1,8,1:2,2,2:1,4,2')
  p.add_argument('--peak', type=int, default=1, help='1: also compile the step for its peak')
  a = p.parse_args(argv)
  print('command: python ' + ' '.join(sys.argv))
  print(f'jax {jax.__version__}; {jax.device_count()} {jax.devices()[0].platform} devices')
  meshes = [tuple(int(x) for x in m.split(',')) for m in a.meshes.split(':')]
  gib = 2**30
  print(
    '| config | params | mesh (data,fsdp,tensor) | devices | state / device GiB | '
    'ratio to 1/N | ratio to 1/(fsdp*tensor) | peak step / device GiB |'
  )
  print('|---|---|---|---|---|---|---|---|')
  for spec in a.configs.split(','):
    config = load_config(spec)
    config.model.scan_layers = bool(a.peak)
    model = objectives.make_model(config, VOCAB[config.objective])
    tx = optim.make(config.train)
    base = None
    for shape in meshes:
      n = int(np.prod(shape))
      mesh = sharding.make_mesh(shape, jax.devices()[:n])
      abstract = trainer.abstract_state(model, tx, mesh, objectives.init_inputs(config))
      state = state_bytes_per_device(abstract)
      if base is None:
        if n != 1:
          raise ValueError('the first mesh is the baseline: make it 1,1,1')
        base = state
        n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
      peak = '-'
      if a.peak:
        t0 = time.perf_counter()
        peak = f'{peak_bytes(config, model, tx, abstract, mesh) / gib:.2f}'
        print(f'  compiled {spec} {shape} in {time.perf_counter() - t0:.0f} s', file=sys.stderr)
      print(
        f'| {spec} | {n_params / 1e6:.0f}M | {shape} | {n} | {state / gib:.3f} | '
        f'{state / (base / n):.2f} | {state / (base / (shape[1] * shape[2])):.2f} | {peak} |',
        flush=True,
      )


if __name__ == '__main__':
  main()
