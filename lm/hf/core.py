"""The generic half of HuggingFace interop: what a family's `Spec` is, and everything done with
one (config.json <-> ModelConfig, state dict <-> params, reading weight files, writing HF
directories). Nothing here knows any family: each lives in its own module beside this one, and
`lm.hf` registers them in `SPECS`.

Each model is one table of (our param paths, HF tensor name, codec) rules; the per-layer part is
written once per stack (an encoder-decoder has two) and expanded per layer, stacking on a leading
axis when `cfg.scan_layers`. Both directions check the table against the model's own parameter
shapes (`jax.eval_shape` of init), so a missing, unexpected or mis-shaped tensor raises a
ValueError naming every offender instead of silently loading part of a checkpoint.

Needs no transformers; torch only to read `pytorch_model.bin`.
"""

import dataclasses
import functools
import json
import math
import pathlib
import re
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import traverse_util

from lm import models as M
from lm import sharding

StateDict = dict[str, np.ndarray]


# ------------------------------------------------------------------------------------------------
# Tensor layout.


@dataclasses.dataclass(frozen=True)
class Codec:
  """One HF tensor <-> one or more of our leaves."""

  split: Callable[[np.ndarray], tuple]  # HF tensor -> our leaves
  join: Callable[[list], np.ndarray]  # our leaves -> HF tensor


SAME = Codec(lambda w: (w,), lambda ws: ws[0])
LINEAR = Codec(lambda w: (w.T,), lambda ws: ws[0].T)  # torch Linear is [out, in]; Dense [in, out]
QKV = Codec(lambda w: tuple(np.split(w, 3, -1)), lambda ws: np.concatenate(ws, -1))  # fused q/k/v


@dataclasses.dataclass(frozen=True)
class Rule:
  ours: tuple  # our param paths ('a/b/kernel'), relative to a layer for per-layer rules
  hf: str  # HF name, relative to `Spec.layer_prefix` for per-layer rules
  codec: Codec = SAME
  when: Callable[[M.ModelConfig], bool] = lambda cfg: True  # the tensor exists in this config


def dense(ours, hf, codec=LINEAR, bias=lambda cfg: True):
  """A Dense layer (or fused Dense layers: `ours` a tuple) <-> HF `.weight` / `.bias`; `bias`
  says for which configs the bias exists."""
  mods = (ours,) if isinstance(ours, str) else ours
  return [
    Rule(tuple(f'{m}/kernel' for m in mods), f'{hf}.weight', codec),
    Rule(tuple(f'{m}/bias' for m in mods), f'{hf}.bias', QKV if codec is QKV else SAME, bias),
  ]


def norm(ours, hf):
  return [Rule((f'{ours}/scale',), f'{hf}.weight'), Rule((f'{ours}/bias',), f'{hf}.bias')]


def emb(ours, hf):
  return Rule((f'{ours}/embedding',), f'{hf}.weight')


@dataclasses.dataclass(frozen=True)
class Spec:
  """Everything that differs between the supported architectures."""

  module: type  # our nn.Module
  architecture: str  # HF class written to config.json
  prefix: str  # HF base-model prefix; bare-model checkpoints lack it
  top: list  # rules outside the layer stack
  layer_prefix: str
  layer: list
  tied: dict  # HF alias -> the HF name it is tied to (one param here)
  fixed: dict  # ModelConfig fields the architecture pins
  config: dict  # ModelConfig field -> HF config key
  activation_key: Optional[str]  # None: `read_extra` sets the activation
  hf_defaults: dict  # HF class defaults: saved configs omit some keys
  hf_allowed: dict  # HF config key -> values we can reproduce (first = assumed when absent)
  hf_extra: dict  # written on export
  # Config keys beyond the 1:1 table: HF dict -> (ModelConfig fields, problems), and back.
  read_extra: Callable[[dict], tuple] = lambda d: ({}, [])
  write_extra: Callable[[M.ModelConfig], dict] = lambda cfg: {}
  imported: dict = dataclasses.field(default_factory=dict)  # set on import, ignored on export
  config_cls: type = M.ModelConfig
  # (our stack path, HF layer prefix, layer rules, layer count); () = one stack: 'stack', the
  # `layer_prefix` and `layer` rules, cfg.num_layers layers
  stacks: tuple = ()
  aliases: dict = dataclasses.field(default_factory=dict)  # HF alias -> name, tied in any config
  # HF name -> the name read when the file lacks it (a tied tensor save_pretrained left out)
  fallback: dict = dataclasses.field(default_factory=dict)
  # ModelConfig -> what the HF architecture cannot express beyond `fixed` (problem messages)
  check_extra: Callable[[M.ModelConfig], list] = lambda cfg: []
  # Like `write_extra`, but placed after `dtype` in config.json
  write_last: Callable[[M.ModelConfig], dict] = lambda cfg: {}


# What older architectures cannot express: ModelConfig's newer options at their classic values.
CLASSIC = dict(
  norm='layernorm', mlp='dense', bias='all', tie_embeddings=True, num_kv_heads=0, sliding_window=0
)

# kind ('model_type' in config.json) -> Spec; `lm.hf` fills it from the family modules.
SPECS: dict[str, Spec] = {}

# HF activation -> ours (exact equivalents only), and back.
ACTIVATIONS = {
  'gelu': 'gelu',
  'gelu_new': 'gelu_tanh',
  'gelu_pytorch_tanh': 'gelu_tanh',
  'relu': 'relu',
}
ACTIVATIONS['silu'] = 'silu'
HF_ACTIVATION = {'gelu': 'gelu', 'gelu_tanh': 'gelu_new', 'relu': 'relu', 'silu': 'silu'}


def module(kind: str, cfg: M.ModelConfig) -> nn.Module:
  return _spec(kind).module(cfg)


def _spec(kind: str) -> Spec:
  if kind not in SPECS:
    raise ValueError(f'Unsupported model kind {kind!r}; supported: {sorted(SPECS)}.')
  return SPECS[kind]


# ------------------------------------------------------------------------------------------------
# Configs.


def config_from_hf(hf_config) -> tuple[str, M.ModelConfig]:
  """(kind, ModelConfig) from an HF config (dict or PretrainedConfig); refuses what we'd compute
  differently, since a silently different architecture would load fine and predict garbage."""
  d = dict(hf_config if isinstance(hf_config, dict) else hf_config.to_dict())
  kind = d.get('model_type')
  spec = _spec(kind)
  d = {**spec.hf_defaults, **d}
  bad = [
    f'{k}={d[k]!r} (supported: {list(ok)})'
    for k, ok in spec.hf_allowed.items()
    if d.get(k, ok[0]) not in ok
  ]
  act = d[spec.activation_key] if spec.activation_key else 'relu'
  if act not in ACTIVATIONS:
    bad.append(f'{spec.activation_key}={act!r} (supported: {sorted(ACTIVATIONS)})')
  extra, extra_bad = spec.read_extra(d)
  bad += extra_bad
  if bad:
    raise ValueError(f'Unsupported {kind} config: {"; ".join(bad)}.')
  fields = {ours: d[theirs] for ours, theirs in spec.config.items()}
  if fields['mlp_dim'] is None:  # HF's default, 4 * hidden_size
    fields['mlp_dim'] = 4 * fields['hidden_size']
  fields = {**fields, 'activation': ACTIVATIONS[act], **spec.fixed, **spec.imported, **extra}
  return kind, spec.config_cls(**fields)


def config_to_hf(kind: str, cfg: M.ModelConfig, **hf_overrides: Any) -> dict:
  """config.json contents for `kind`'s HF architecture; `hf_overrides` set what ModelConfig does
  not know (bos/eos/pad token ids, ...)."""
  spec = _spec(kind)
  _check_cfg(kind, cfg)
  d = {
    'architectures': [spec.architecture],
    'model_type': kind,
    **{theirs: getattr(cfg, ours) for ours, theirs in spec.config.items()},
    **({spec.activation_key: HF_ACTIVATION[cfg.activation]} if spec.activation_key else {}),
    **spec.hf_extra,
    **spec.write_extra(cfg),
    'dtype': str(cfg.param_dtype),
    'torch_dtype': str(cfg.param_dtype),  # transformers 4's name (5 reads either)
    **spec.write_last(cfg),
  }
  return {**d, **hf_overrides}


def _check_cfg(kind: str, cfg: M.ModelConfig):
  """Configs the HF architecture cannot express (RoPE, pre-LN for a post-LN one, ...)."""
  spec = _spec(kind)
  bad = [
    f'{k}={getattr(cfg, k)!r} (needs {v!r})' for k, v in spec.fixed.items() if getattr(cfg, k) != v
  ]
  bad += spec.check_extra(cfg)
  if cfg.activation not in HF_ACTIVATION:
    bad.append(f'activation={cfg.activation!r}')
  if bad:
    raise ValueError(f'ModelConfig not expressible as HF {kind}: {"; ".join(bad)}.')


# ------------------------------------------------------------------------------------------------
# State dicts and weight files.

_BUFFERS = re.compile(
  r'(^|\.)(position_ids|token_type_ids|attn\.bias|attn\.masked_bias|rotary_emb\.inv_freq)$'
)


def _strip(name: str) -> str:
  """`name` without the base-model prefix of any family in `SPECS`."""
  for p in (s.prefix for s in SPECS.values() if s.prefix):
    if name.startswith(p):
      return name[len(p) :]
  return name


def _to_numpy(x) -> np.ndarray:
  if hasattr(x, 'detach'):  # torch.Tensor
    x = x.detach().cpu()
    if str(x.dtype) == 'torch.bfloat16':  # numpy has no bfloat16: the same bits as ml_dtypes'
      import torch  # pylint: disable=import-outside-toplevel

      return x.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return x.numpy()
  return np.asarray(x)


def _renamed(items) -> dict:
  """{canonical name: value} of (HF name, value) pairs: the base-model prefix stripped, so
  checkpoints of the bare model (as some original hub files are) and of the head models look
  alike; buffers dropped and TF-era LayerNorm gamma/beta renamed."""
  out = {}
  for k, v in items:
    if _BUFFERS.search(k):
      continue
    name = re.sub(r'LayerNorm\.gamma$', 'LayerNorm.weight', _strip(k))
    name = re.sub(r'LayerNorm\.beta$', 'LayerNorm.bias', name)
    if name in out:
      raise ValueError(
        f'State dict holds {name!r} twice (with and without a prefix, or as '
        f'gamma/beta and weight/bias); last seen as {k!r}.'
      )
    out[name] = v
  return out


def canonical(state_dict) -> StateDict:
  """HF names without the base-model prefix and numpy values (bfloat16 kept, as ml_dtypes'),
  buffers dropped and TF-era LayerNorm gamma/beta renamed (`_renamed`)."""
  return {k: _to_numpy(v) for k, v in _renamed(state_dict.items()).items()}


@dataclasses.dataclass(frozen=True)
class Stored:
  """One tensor of a checkpoint, not read yet: its shape and dtype, and `read()` for its values
  (from a safetensors file: a memory map of this tensor alone, unmapped once the array and its
  views are dropped, so reading a checkpoint tensor by tensor never holds the whole file)."""

  shape: tuple
  dtype: np.dtype
  read: Callable[[], np.ndarray]

  @classmethod
  def of(cls, x) -> 'Stored':
    """An array already in memory."""
    x = _to_numpy(x)
    return cls(tuple(x.shape), x.dtype, lambda: x)


_SAFETENSORS_DTYPES = {
  'F64': np.float64,
  'F32': np.float32,
  'F16': np.float16,
  'BF16': ml_dtypes.bfloat16,
  'I64': np.int64,
  'I32': np.int32,
  'I16': np.int16,
  'I8': np.int8,
  'U8': np.uint8,
  'BOOL': np.bool_,
}
_SAFETENSORS_NAMES = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}


def _map(path: pathlib.Path, dtype: np.dtype, offset: int, shape: tuple) -> np.ndarray:
  count = math.prod(shape)
  if not count:
    return np.zeros(shape, dtype)
  return np.memmap(path, dtype, 'r', offset=offset, shape=(count,)).reshape(shape)


def _safetensors_tensors(path: pathlib.Path) -> dict[str, Stored]:
  """The file's tensors from its header alone. Parsed here rather than by safetensors.numpy,
  which cannot name bfloat16, the dtype of most recent large checkpoints."""
  with open(path, 'rb') as f:
    n = int.from_bytes(f.read(8), 'little')
    header = json.loads(f.read(n))
  out = {}
  for k, t in header.items():
    if k == '__metadata__':
      continue
    if t['dtype'] not in _SAFETENSORS_DTYPES:
      raise ValueError(f'{path}: tensor {k} has dtype {t["dtype"]}, which is not supported.')
    dtype, shape = np.dtype(_SAFETENSORS_DTYPES[t['dtype']]), tuple(t['shape'])
    read = functools.partial(_map, path, dtype, 8 + n + t['data_offsets'][0], shape)
    out[k] = Stored(shape, dtype, read)
  return out


def _torch_tensors(path: pathlib.Path) -> dict[str, Stored]:
  """A `pytorch_model.bin`'s tensors, memory-mapped when it is a zipfile checkpoint (torch >=
  1.6 writes those), else loaded whole."""
  import torch  # pylint: disable=import-outside-toplevel

  try:
    sd = torch.load(str(path), map_location='cpu', weights_only=True, mmap=True)
  except RuntimeError:  # the legacy (pre-zipfile) format cannot be mapped
    sd = torch.load(str(path), map_location='cpu', weights_only=True)
  return {
    k: Stored(tuple(v.shape), _to_numpy(v.reshape(-1)[:0]).dtype, functools.partial(_to_numpy, v))
    for k, v in sd.items()
  }


def _file_tensors(path: pathlib.Path) -> dict[str, Stored]:
  return _safetensors_tensors(path) if path.suffix == '.safetensors' else _torch_tensors(path)


_WEIGHT_FILES = (
  'model.safetensors',
  'model.safetensors.index.json',
  'pytorch_model.bin',
  'pytorch_model.bin.index.json',
)


def stored_tensors(path) -> dict[str, Stored]:
  """A weights file, a sharded `*.index.json` or an HF directory holding either (safetensors
  preferred), as `Stored` tensors under `canonical` names: headers read, no values."""
  path = pathlib.Path(path)
  if path.is_dir():
    found = [path / n for n in _WEIGHT_FILES if (path / n).exists()]
    if not found:
      raise FileNotFoundError(f'No weights in {path}; looked for {list(_WEIGHT_FILES)}.')
    path = found[0]
  if path.name.endswith('.index.json'):
    shards = sorted(set(json.loads(path.read_text())['weight_map'].values()))
    raw = {}
    for shard in shards:
      raw.update(_file_tensors(path.parent / shard))
  else:
    raw = _file_tensors(path)
  return _renamed(raw.items())


def load_state_dict(path) -> StateDict:
  """A weights file, a sharded `*.index.json`, or an HF directory holding either (safetensors
  preferred), as `canonical` numpy arrays (read-only memory maps for safetensors)."""
  return {k: s.read() for k, s in stored_tensors(path).items()}


def stored_param_dtype(stored: dict[str, Stored]) -> str:
  """The `param_dtype` that keeps a checkpoint in its stored dtype: 'bfloat16' when bfloat16
  holds most of its floating-point elements, else 'float32' (float16 widens: it is no training
  dtype without loss scaling, and float32 holds it exactly)."""
  counts = {}
  for s in stored.values():
    if jnp.issubdtype(s.dtype, jnp.floating):
      counts[s.dtype] = counts.get(s.dtype, 0) + math.prod(s.shape)
  main = max(counts, key=counts.get) if counts else np.dtype(np.float32)
  return 'bfloat16' if main == np.dtype(ml_dtypes.bfloat16) else 'float32'


# ------------------------------------------------------------------------------------------------
# Params <-> state dicts.


def _abstract_params(spec: Spec, cfg: M.ModelConfig):
  """Our params as init makes them (boxed with their logical axes), from tracing init: no
  compute, no memory."""
  ids = jnp.zeros((1, 1), jnp.int32)
  cfg = dataclasses.replace(cfg, attention_impl='einsum', remat='none')  # shape-neutral, traceable
  return jax.eval_shape(lambda: spec.module(cfg).init(jax.random.PRNGKey(0), ids))['params']


def _expected_shapes(spec: Spec, cfg: M.ModelConfig) -> dict[str, tuple]:
  """Our param shapes, from tracing init (no compute, no memory)."""
  flat = traverse_util.flatten_dict(nn.unbox(_abstract_params(spec, cfg)), sep='/')
  return {k: v.shape for k, v in flat.items()}


def _slots(spec: Spec, cfg: M.ModelConfig):
  """Rules with layers expanded: (leaves, full HF name, codec), a leaf being (path, layer index
  into a scanned stack or None)."""
  for r in spec.top:
    if r.when(cfg):
      yield tuple((p, None) for p in r.ours), r.hf, r.codec
  stacks = spec.stacks or (('stack', spec.layer_prefix, spec.layer, lambda cfg: cfg.num_layers),)
  for stack, prefix, rules, count in stacks:
    for i in range(count(cfg)):
      leaf = (
        (lambda p: (f'{stack}/layers/{p}', i))
        if cfg.scan_layers
        else (lambda p: (f'{stack}/layers_{i}/{p}', None))
      )
      for r in rules:
        if r.when(cfg):
          yield tuple(map(leaf, r.ours)), prefix.format(i=i) + r.hf, r.codec


def _tied(spec: Spec, cfg: M.ModelConfig) -> dict:
  return {**spec.aliases, **(spec.tied if cfg.tie_embeddings else {})}


def _leaf_shape(expected, leaf):
  path, i = leaf
  return expected[path] if i is None else expected[path][1:]


def _hf_shape(codec: Codec, shapes) -> tuple:
  return codec.join([np.broadcast_to(np.int8(0), s) for s in shapes]).shape


def _table_errors(spec, cfg, expected) -> list[str]:
  """Our params the table misses or invents (the model changed under the table)."""
  covered = {path for leaves, _, _ in _slots(spec, cfg) for path, _ in leaves}
  return [f'param {p} has no HF counterpart' for p in sorted(set(expected) - covered)] + [
    f'table names param {p} the model lacks' for p in sorted(covered - set(expected))
  ]


def _fail(what: str, **problems):
  lines = [f'  {label} ({len(v)}): {", ".join(v)}' for label, v in problems.items() if v]
  if lines:
    raise ValueError(f'{what}:\n' + '\n'.join(lines))


def _convert(kind: str, stored: dict, cfg: M.ModelConfig, mesh=None) -> dict:
  """Our params tree from `Stored` HF tensors, all-or-nothing: every name, shape and tie is
  checked on the shapes alone before any value is read; then each tensor is read, split by its
  codec and cast to its param's dtype (init's, i.e. `param_dtype`), one at a time (a scanned
  stack gathers one leaf's layers first). Without `mesh`, plain numpy (an unstacked leaf may share
  memory with its tensor); with one, each leaf goes straight to its sharding on `mesh` (the
  logical axes of `lm.sharding.RULES`), so the host never holds more than one leaf's copy."""
  spec = _spec(kind)
  _check_cfg(kind, cfg)
  boxed = _abstract_params(spec, cfg)
  abstract = traverse_util.flatten_dict(nn.unbox(boxed), sep='/')
  expected = {k: v.shape for k, v in abstract.items()}
  _fail(f'{kind} table does not match the model', errors=_table_errors(spec, cfg, expected))
  missing, mismatched, plan, used = [], [], [], set()
  for ours, hf, codec in _slots(spec, cfg):
    key = _strip(hf)
    if key not in stored and _strip(spec.fallback.get(hf, hf)) in stored:
      key = _strip(spec.fallback[hf])
    if key not in stored:
      missing.append(hf)
      continue
    used.add(key)
    want = _hf_shape(codec, [_leaf_shape(expected, leaf) for leaf in ours])
    if stored[key].shape != want:
      mismatched.append(f'{hf} {stored[key].shape} != expected {want}')
      continue
    plan.append((ours, key, codec))
  untied = []
  for alias, main in _tied(spec, cfg).items():
    a, m = _strip(alias), _strip(main)
    if a in stored:
      used.add(a)
      if m in stored and (
        stored[a].shape != stored[m].shape or not np.array_equal(stored[a].read(), stored[m].read())
      ):
        untied.append(f'{alias} != {main}')
  unexpected = sorted(set(stored) - used)
  _fail(
    f'Cannot load {kind} state dict into {cfg}',
    missing=missing,
    unexpected=unexpected,
    shape_mismatch=mismatched,
    untied_weights=untied,
  )

  place = lambda path, x: x  # noqa: E731
  if mesh is not None:
    shardings = traverse_util.flatten_dict(
      sharding.to_shardings(sharding.logical_specs(boxed), mesh), sep='/'
    )
    place = lambda path, x: jax.device_put(x, shardings[path])  # noqa: E731
  flat, stacks = {}, {}
  for ours, key, codec in plan:
    if ours[0][1] is None:
      for (path, _), v in zip(ours, codec.split(stored[key].read())):
        flat[path] = place(path, np.asarray(v, abstract[path].dtype))
    else:  # a scanned stack: each leaf's layers are gathered first
      stacks.setdefault(tuple(path for path, _ in ours), []).append((ours, key, codec))
  for paths, rules in stacks.items():
    bufs = [np.empty(abstract[p].shape, abstract[p].dtype) for p in paths]
    for ours, key, codec in rules:
      for buf, (_, i), v in zip(bufs, ours, codec.split(stored[key].read())):
        buf[i] = v
    for path, buf in zip(paths, bufs):
      flat[path] = place(path, buf)
    del bufs
  return traverse_util.unflatten_dict(flat, sep='/')


def from_hf(kind: str, state_dict, cfg: M.ModelConfig) -> dict:
  """Our params tree (plain numpy, `param_dtype`) from an HF state dict, all-or-nothing.

  Unstacked leaves may share memory with the state dict's tensors (no copy of a large model).
  """
  return _convert(kind, {k: Stored.of(v) for k, v in canonical(state_dict).items()}, cfg)


def _hf_tensors(kind: str, params, cfg: M.ModelConfig) -> list:
  """[(HF name, shape, dtype, make)] of the HF state dict (tied aliases left out), after checking
  the params against the model; `make()` computes one tensor, in its params' dtype."""
  spec = _spec(kind)
  _check_cfg(kind, cfg)
  if set(params) == {'params'}:
    params = params['params']
  flat = traverse_util.flatten_dict(params, sep='/')
  expected = _expected_shapes(spec, cfg)
  _fail(f'{kind} table does not match the model', errors=_table_errors(spec, cfg, expected))
  _fail(
    f'Params do not match {cfg}',
    missing=sorted(set(expected) - set(flat)),
    unexpected=sorted(set(flat) - set(expected)),
    shape_mismatch=[
      f'{p} {tuple(np.shape(flat[p]))} != expected {s}'
      for p, s in expected.items()
      if p in flat and np.shape(flat[p]) != s
    ],
  )

  def make(ours, codec):  # one layer of a stacked leaf at a time (a jax slice, then host)
    return np.ascontiguousarray(
      codec.join([np.asarray(flat[p] if i is None else flat[p][i]) for p, i in ours])
    )

  return [
    (
      hf,
      _hf_shape(codec, [_leaf_shape(expected, leaf) for leaf in ours]),
      np.dtype(np.result_type(*[flat[p].dtype for p, _ in ours])),
      functools.partial(make, ours, codec),
    )
    for ours, hf, codec in _slots(spec, cfg)
  ]


def to_hf(kind: str, params, cfg: M.ModelConfig) -> StateDict:
  """The HF state dict (full names, tied aliases included, as `model.state_dict()` has them)."""
  out = {name: make() for name, _, _, make in _hf_tensors(kind, params, cfg)}
  out.update({alias: out[main] for alias, main in _tied(_spec(kind), cfg).items()})
  return out


# ------------------------------------------------------------------------------------------------
# Directories.


def import_pretrained(directory, mesh=None, **overrides: Any) -> tuple[str, M.ModelConfig, dict]:
  """(kind, cfg, params) from a local HF model directory, streamed: tensors are read one at a
  time from memory maps of the (sharded) weight files, converted and placed straight into their
  shardings on `mesh` (default: all devices, data-parallel, as `lm.pretrained.load`), so the
  host holds about one copy of the checkpoint in its stored dtype, never a float32 copy of the
  whole model besides a framework's. `params` are jax Arrays.

  `overrides` replace ModelConfig fields that do not change the math (scan_layers, dtype, remat,
  attention_impl, dropout...). `param_dtype` defaults to the stored dtype (`stored_param_dtype`:
  a bfloat16 checkpoint gives bfloat16 params); pass param_dtype='float32' to widen."""
  directory = pathlib.Path(directory)
  kind, cfg = config_from_hf(json.loads((directory / 'config.json').read_text()))
  stored = stored_tensors(directory)
  cfg = dataclasses.replace(cfg, **{'param_dtype': stored_param_dtype(stored), **overrides})
  mesh = mesh if mesh is not None else sharding.make_mesh((-1, 1, 1))
  return kind, cfg, _convert(kind, stored, cfg, mesh)


def _write_safetensors(path: pathlib.Path, tensors: list) -> None:
  """A safetensors file of [(name, shape, dtype, make)], each tensor computed and written in
  turn: the header comes from the shapes and dtypes alone. Widest dtypes first, as
  safetensors' own writer orders them, so every tensor starts aligned to its item size."""
  tensors = sorted(tensors, key=lambda t: (-t[2].itemsize, t[0]))
  header, offset = {}, 0
  for name, shape, dtype, _ in tensors:
    if dtype not in _SAFETENSORS_NAMES:
      raise ValueError(f'cannot write {name} as safetensors: dtype {dtype} is not supported.')
    size = math.prod(shape) * dtype.itemsize
    header[name] = dict(
      dtype=_SAFETENSORS_NAMES[dtype], shape=list(shape), data_offsets=[offset, offset + size]
    )
    offset += size
  head = json.dumps({'__metadata__': {'format': 'pt'}, **header}, separators=(',', ':')).encode()
  head += b' ' * (-len(head) % 8)
  with open(path, 'wb') as f:
    f.write(len(head).to_bytes(8, 'little') + head)
    for name, shape, dtype, make in tensors:
      x = make()
      if x.shape != tuple(shape) or x.dtype != dtype:
        raise AssertionError(f'{name}: made {x.shape} {x.dtype}, declared {shape} {dtype}')
      f.write(np.ascontiguousarray(x).reshape(-1).view(np.uint8).data)


def export_pretrained(
  kind: str, cfg: M.ModelConfig, params, directory, max_shard_bytes: int = 0, **hf_overrides: Any
) -> None:
  """config.json + model.safetensors that `transformers.AutoModel*.from_pretrained` loads; tied
  aliases are left out as `save_pretrained` does. With `max_shard_bytes`, weights go into
  `model-0000i-of-0000n.safetensors` files of at most that size (a tensor larger than it gets a
  file of its own) and `model.safetensors.index.json`, as HF writes large models. `hf_overrides`
  go into config.json.

  Each tensor keeps its params' dtype (bfloat16 params give bfloat16 safetensors, float32 ones
  float32), and config.json's `dtype` (and `torch_dtype`, transformers 4's name) is the dtype
  holding most of the bytes. Tensors are computed and written one at a time: the host holds the
  params and one tensor."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  tied = _tied(_spec(kind), cfg)
  tensors = [t for t in _hf_tensors(kind, params, cfg) if t[0] not in tied]
  nbytes = lambda t: math.prod(t[1]) * t[2].itemsize  # noqa: E731
  by_dtype = {}
  for t in tensors:
    by_dtype[t[2]] = by_dtype.get(t[2], 0) + nbytes(t)
  dtype = max(by_dtype, key=by_dtype.get).name if by_dtype else str(cfg.param_dtype)
  config = config_to_hf(kind, dataclasses.replace(cfg, param_dtype=dtype), **hf_overrides)
  (directory / 'config.json').write_text(json.dumps(config, indent=2) + '\n')
  if not max_shard_bytes:
    _write_safetensors(directory / 'model.safetensors', tensors)
    return
  shards = [[]]
  for t in tensors:
    if shards[-1] and sum(map(nbytes, shards[-1])) + nbytes(t) > max_shard_bytes:
      shards.append([])
    shards[-1].append(t)
  names = [f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors' for i in range(len(shards))]
  for part, name in zip(shards, names):
    _write_safetensors(directory / name, part)
  index = dict(
    metadata=dict(total_size=sum(map(nbytes, tensors))),
    weight_map={t[0]: name for part, name in zip(shards, names) for t in part},
  )
  (directory / 'model.safetensors.index.json').write_text(json.dumps(index, indent=2) + '\n')
