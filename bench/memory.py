r"""Bytes per device of the train state, and the compiled train step's peak, for each mesh.

  python bench/memory.py             # BERT base/large, GPT-2 small/medium, T5 v1.1 small/base
  python bench/memory.py --configs=gpt2.py:small --meshes=1,1,1:1,8,1 --peak=0   # quick
  python bench/memory.py --configs=llama.py:1b,llama.py:8b --variants=full,lora,qlora \
      --meshes=1,1,1:1,8,1 --seq_len=2048 --unhoisted=1   # full FT vs LoRA vs QLoRA (issue 28)
  python bench/memory.py --longest=1 --configs=gpt2.py:small,llama.py:1b \
      --meshes=1,1,1:1,1,1,8    # the longest sequence per budget, 1 device vs context 8

Runs on 8 simulated CPU devices (it sets XLA_FLAGS itself). For each paper-size config and
mesh (data, fsdp, tensor) it reports, per device:
  * state: params + AdamW moments (+ step), from the shardings `lm.sharding.RULES` gives the
    abstract state (`lm.trainer.abstract_state`): the bytes of each leaf's shard on one
    device, summed; nothing is allocated, so paper sizes fit;
  * peak: XLA's memory analysis of the compiled train step (`lm.objectives.make_train_step`,
    the step train.py runs) on a global batch of --rows_per_device rows (default one) per
    device at the config's seq_len or --seq_len (T5: seq_len encoder tokens and the span
    batcher's target length):
    arguments + outputs - aliased (donated) + temporaries. Layers are scanned for this column
    only (compile time flat in depth; an unrolled stack's temporaries differ little).
  * peak unhoisted (--unhoisted=1): the same step compiled without XLA's while-loop-invariant
    code motion. XLA:CPU has no bfloat16 dot: it converts bf16 dot operands to float32, and
    code motion then hoists the conversion of whole loop-invariant stacks (the scanned layers'
    bf16 kernels, the saved bf16 residuals, with FSDP their all-gathers) out of the layer loop:
    float32 copies of the whole model that a GPU or TPU, whose dots take bf16, never makes.
    Unhoisted, those conversions happen one layer at a time, which is closer to an
    accelerator's peak for a bf16 model; it still counts one layer's float32 copies, the
    float32 attention scores of the 'xla' attention (no flash attention on CPU) and a float32
    copy of the embedding for the logits. Both columns are XLA:CPU's; neither is a GPU's.
With --longest=1 it reports instead, per config and mesh (data, fsdp, tensor[, context]), the
longest sequence of one row (the global batch is data * fsdp rows) whose compiled step fits each
budget: the step's peak is compiled at --fit_lengths (three lengths), the quadratic through them
(a + b T + c T^2: c T^2 is the attention scores and probabilities, b T the other activations
and the position table, a the state) is solved for each budget, rounded down to a multiple of
1024, and that length is compiled to check it fits. Both meshes run the same attention math:
--attention_impl (default 'einsum': float32 scores, as the context-parallel schedules keep
them) on one device, `lm.models.context_parallel` over the context axis; the ratio of the two
quadratic terms is what the context axis divides attention activations by. These are XLA:CPU's
numbers: on a GPU or TPU a fused kernel keeps one device's attention memory linear in T.
--ring_baseline=1 adds the first mesh run through the ring schedule itself on one device
(`context_parallel.enabled` forced on; no communication): the ratio of its quadratic term to the
context mesh's is what the context axis alone divides attention activations by.

The baseline is the same config on one device; the ratio columns are per-device state / (the
1-device state / N), so 1.00 is a perfect 1/N split (the target under full FSDP is <= 1.10), and
the same against 1/(fsdp*tensor), the share a mesh that replicates over `data` can reach.

Each config runs as each of `--variants` (`VARIANTS`): 'full' trains every parameter as the
config says; 'lora' and 'qlora' apply a `lora` block (rank `--rank` on every target; 'qlora'
stores the frozen attention and MLP kernels as `--quant`) with the base in `--lora_param_dtype`,
through `lm.models.lora.configure` as the jobs do, so the state holds AdamW moments of the
adapters only. 'full-bf16' is full fine-tuning with bfloat16 parameters (the AdamW moments in the
dtype `lm.trainer` gives them: see the opt state column). `params` is the parameter count of the
model without adapters or quantization, `trainable` the differentiated ones. The last two columns
say whether the peak (as compiled / unhoisted; the state with --peak=0) fits 16 GiB and 80 GiB
per device, with nothing left over for the runtime.
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
from lm.models import context_parallel, lora  # noqa: E402
from train_throughput import synthetic_batch  # noqa: E402

# name: (the config's `lora` block, model.param_dtype; None: the config's); rank and quant are
# filled from the flags
VARIANTS = {
  'full': ({}, None),
  'full-bf16': ({}, 'bfloat16'),
  'lora': ({'rank': None}, 'lora'),
  'qlora': ({'rank': None, 'quant': None}, 'lora'),
}
# XLA options of the `unhoisted` peak column (see the module doc)
UNHOISTED = {'xla_disable_hlo_passes': 'while-loop-invariant-code-motion'}
BUDGETS_GIB = (16, 80)  # per device: a 16 GB card or TPU v5e chip; an 80 GB H100 / A100


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


def vocab_of(config) -> int:
  """The tokenizer's vocab the config names (T5: 32000 BPE; the model adds the sentinels and
  pads to a multiple of 128)."""
  return config.data.tokenizer.vocab_size


def with_variant(config, name: str, a):
  """`config` as variant `name` of `VARIANTS` (its `lora` block and param dtype set)."""
  block, dtype = VARIANTS[name]
  fill = {'rank': a.rank, 'quant': a.quant}
  config.lora.update({k: fill[k] if v is None else v for k, v in block.items()})
  if dtype is not None:
    config.model.param_dtype = a.lora_param_dtype if dtype == 'lora' else dtype
  return config


def make_model(config):
  """The model a job builds: the objective's body with the config's `lora` block applied."""
  model = objectives.make_model(config, vocab_of(config))
  return type(model)(lora.configure(model.cfg, config.lora))


def param_counts(model, init_inputs, params) -> tuple:
  """(parameters of the model without adapters or quantization, trainable ones in `params`)."""
  plain = type(model)(lora.base_config(model.cfg))
  base = jax.eval_shape(lambda r: plain.init(r, *init_inputs)['params'], jax.random.PRNGKey(0))
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
  return count(base), count(lora.split(params)[0])


def train_batch(config, rows: int) -> dict:
  """A global batch with the fields, dtypes and shapes the config's batcher gives."""
  t, vocab = config.data.seq_len, vocab_of(config)
  if config.objective == 'span':  # SpanBatcher: seq_len encoder tokens, raw_length's targets
    d = config.data
    _, targets = span.raw_length(t, d.noise_density, d.mean_noise_span_length)
    ids = lambda n: np.zeros((rows, n), np.int32)
    return dict(input_ids=ids(t), decoder_input_ids=ids(targets), targets=ids(targets))
  return synthetic_batch('bert' if config.objective == 'mlm' else 'gpt', rows, t, vocab)


def peak_bytes(config, model, tx, abstract, mesh, rows: int, unhoisted: bool = False) -> list:
  """[the compiled step's peak] (+ the same step's compiled with `UNHOISTED` when asked)."""
  state_sh = jax.tree.map(lambda x: x.sharding, abstract)
  step = objectives.make_train_step(config, model, tx, state_sh, mesh)
  batch = train_batch(config, rows)
  bsh = sharding.batch_sharding(mesh)
  abstract_batch = {
    k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=bsh) for k, v in batch.items()
  }
  peaks = []
  with sharding.use(mesh):  # the jitted step under with_mesh's wrapper
    lowered = step.__wrapped__.lower(abstract, abstract_batch)
    for options in [None] + [UNHOISTED] * unhoisted:
      m = lowered.compile(options).memory_analysis()
      peaks.append(
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        - m.alias_size_in_bytes
        + m.temp_size_in_bytes
      )
  return peaks


def step_peak(config, seq_len: int, mesh) -> int:
  """The compiled step's peak per device at `seq_len` tokens, one row per data * fsdp."""
  config = config.copy_and_resolve_references()
  config.data.seq_len = seq_len
  config.model.max_len = max(config.model.max_len, seq_len)  # GPT-2's learned position table
  model = make_model(config)
  tx = optim.make(config.train)
  abstract = trainer.abstract_state(model, tx, mesh, objectives.init_inputs(config))
  rows = mesh.shape['data'] * mesh.shape['fsdp']
  return peak_bytes(config, model, tx, abstract, mesh, rows)[0]


def longest_fit(peak_at, budget: float, fit, step: int = 1024) -> tuple:
  """(The longest multiple of `step` whose compiled peak fits `budget`, that peak), by bisection
  between compiled lengths, started from the fitted quadratic's solution; (0, 0) if none."""
  c, b, a0 = fit
  disc = b * b + 4 * c * (budget - a0)
  guess = int((-b + np.sqrt(disc)) / (2 * c)) // step if budget > a0 and disc >= 0 else 1
  lo, hi, peaks = 0, None, {}  # lo fits (0: none known), hi does not (None: none known)

  def fits(k):
    peaks[k] = peak_at(k * step)
    return peaks[k] <= budget

  k = max(guess, 1)
  while hi is None or hi - lo > 1:
    if fits(k):
      lo = k
      k = k * 2 if hi is None else (lo + hi) // 2
    else:
      hi = k
      if k == 1:
        break
      k = (lo + hi) // 2 if lo else max(1, k // 2)
    if hi is not None and hi - lo <= 1:
      break
  return (lo * step, peaks[lo]) if lo else (0, 0)


def in_a_mesh() -> bool:
  """`context_parallel.enabled` for the ring baseline: on whenever a mesh is in scope (the
  model's init traces outside one)."""
  return not jax.sharding.get_abstract_mesh().empty


def longest(a, meshes) -> None:
  """The --longest=1 table (see the module doc)."""
  enabled = context_parallel.enabled
  gib = 2**30
  lengths = [int(x) for x in a.fit_lengths.split(',')]
  print(
    '| config | mesh (data,fsdp,tensor,context) | peak at '
    + ' / '.join(map(str, lengths))
    + ' GiB | quadratic term at 32768 GiB | '
    + ' | '.join(f'longest at {b} GiB (compiled peak GiB)' for b in BUDGETS_GIB)
    + ' |'
  )
  print('|---' * (4 + len(BUDGETS_GIB)) + '|')
  runs = [(shape, False) for shape in meshes]
  if a.ring_baseline:
    runs.insert(1, (meshes[0], True))
  for spec in a.configs.split(','):
    quad = {}
    for shape, ring in runs:
      context_parallel.enabled = in_a_mesh if ring else enabled
      config = with_variant(load_config(spec), a.variants.split(',')[0], a)
      config.model.update(scan_layers=True, attention_impl=a.attention_impl)
      if a.remat:
        config.model.remat = a.remat
      mesh = sharding.make_mesh(shape, jax.devices()[: int(np.prod(shape))])
      t0 = time.perf_counter()
      peaks = [step_peak(config, t, mesh) for t in lengths]
      c, b, a0 = np.polyfit(np.array(lengths, float), np.array(peaks, float), 2)
      quad[shape, ring] = c
      cells = []
      for budget in BUDGETS_GIB:
        t, peak = longest_fit(lambda t: step_peak(config, t, mesh), budget * gib, (c, b, a0))
        cells.append(f'{t} ({peak / gib:.1f})' if t else 'none')
      print(
        f'| {spec} | {shape}{" ring" if ring else ""} | '
        + ' / '.join(f'{p / gib:.2f}' for p in peaks)
        + f' | {c * 32768**2 / gib:.2f} | '
        + ' | '.join(cells)
        + ' |',
        flush=True,
      )
      print(f'  {spec} {shape}: {time.perf_counter() - t0:.0f} s', file=sys.stderr)
    context_parallel.enabled = enabled
    for base in [k for k in quad if k[0] == meshes[0]]:
      for shape in meshes[1:]:
        n = shape[3] if len(shape) > 3 else 1
        r = quad[base] / quad[shape, False]
        print(
          f'{spec}: quadratic (attention) term, {base[0]}{" ring" if base[1] else ""} / {shape}: '
          f'{r:.2f} (context size {n}; {r / n:.3f} of it)'
        )


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument(
    '--configs',
    default='bert.py:base,bert.py:large,gpt2.py:small,gpt2.py:medium,t5.py:small,t5.py:base',
  )
  p.add_argument('--meshes', default='1,1,1:8,1,1:1,8,1:2,2,2:1,4,2')
  p.add_argument('--peak', type=int, default=1, help='1: also compile the step for its peak')
  p.add_argument('--variants', default='full', help=f'comma-separated, of {sorted(VARIANTS)}')
  p.add_argument('--rank', type=int, default=16, help='lora / qlora: adapter rank')
  p.add_argument('--quant', default='nf4', help="qlora: the frozen kernels' format")
  p.add_argument('--lora_param_dtype', default='bfloat16', help='lora / qlora: the base dtype')
  p.add_argument('--seq_len', type=int, default=0, help="tokens per row; 0: the config's")
  p.add_argument('--rows_per_device', type=int, default=1, help='rows of the global batch')
  p.add_argument(
    '--remat', default='', help="model.remat ('none', 'full', 'dots'); '': the config's"
  )
  p.add_argument(
    '--unhoisted', type=int, default=0, help='1: also the peak without loop-invariant hoisting'
  )
  p.add_argument('--longest', type=int, default=0, help='1: the longest-sequence table')
  p.add_argument('--fit_lengths', default='8192,16384,32768', help='--longest: the fitted lengths')
  p.add_argument('--attention_impl', default='einsum', help="--longest: one device's attention")
  p.add_argument('--ring_baseline', type=int, default=0, help='--longest: + the ring on 1 device')
  a = p.parse_args(argv)
  print('command: python ' + ' '.join(sys.argv))
  print(f'jax {jax.__version__}; {jax.device_count()} {jax.devices()[0].platform} devices')
  print(f'XLA_FLAGS={os.environ["XLA_FLAGS"]}')
  t_start = time.perf_counter()
  meshes = [tuple(int(x) for x in m.split(',')) for m in a.meshes.split(':')]
  if a.longest:
    longest(a, meshes)
    print(f'wall time {time.perf_counter() - t_start:.0f} s')
    return
  gib = 2**30
  budget_cols = ' | '.join(f'fits {b} GiB' for b in BUDGETS_GIB)
  print(
    '| config | variant | params | trainable | mesh (data,fsdp,tensor) | devices | '
    'params / device GiB | opt state / device GiB | state / device GiB | ratio to 1/N | '
    'ratio to 1/(fsdp*tensor) | peak step / device GiB | peak unhoisted / device GiB | '
    f'{budget_cols} |'
  )
  print('|---' * (13 + len(BUDGETS_GIB)) + '|')
  for spec in a.configs.split(','):
    for variant in a.variants.split(','):
      config = with_variant(load_config(spec), variant, a)
      config.model.scan_layers = bool(a.peak)
      if a.seq_len:
        config.data.seq_len = a.seq_len
      if a.remat:
        config.model.remat = a.remat
      model = make_model(config)
      tx = optim.make(config.train)
      inputs = objectives.init_inputs(config)
      base = None
      for shape in meshes:
        n = int(np.prod(shape))
        mesh = sharding.make_mesh(shape, jax.devices()[:n])
        abstract = trainer.abstract_state(model, tx, mesh, inputs)
        state = state_bytes_per_device(abstract)
        if base is None:
          if n != 1:
            raise ValueError('the first mesh is the baseline: make it 1,1,1')
          base = state
          n_params, n_train = param_counts(model, inputs, abstract.params)
        peaks = [state]
        if a.peak:
          t0 = time.perf_counter()
          peaks = peak_bytes(config, model, tx, abstract, mesh, a.rows_per_device * n, a.unhoisted)
          print(
            f'  compiled {spec} {variant} {shape} in {time.perf_counter() - t0:.0f} s',
            file=sys.stderr,
          )
        shown = [f'{x / gib:.2f}' for x in peaks] if a.peak else []
        shown += ['-'] * (2 - len(shown))
        fits = [' / '.join('yes' if x <= b * gib else 'no' for x in peaks) for b in BUDGETS_GIB]
        print(
          f'| {spec} | {variant} | {n_params / 1e6:.0f}M | {n_train / 1e6:.1f}M | {shape} | {n} | '
          f'{state_bytes_per_device(abstract.params) / gib:.3f} | '
          f'{state_bytes_per_device(abstract.opt_state) / gib:.3f} | {state / gib:.3f} | '
          f'{state / (base / n):.2f} | {state / (base / (shape[1] * shape[2])):.2f} | '
          + ' | '.join(shown + fits)
          + ' |',
          flush=True,
        )
  print(f'wall time {time.perf_counter() - t_start:.0f} s')


if __name__ == '__main__':
  main()
