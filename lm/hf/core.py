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
import json
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
# State dicts.

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
  if hasattr(x, 'detach'):  # torch.Tensor; numpy has no bfloat16 of its own
    x = x.detach().cpu()
    x = x.float() if str(x.dtype) == 'torch.bfloat16' else x
    return x.numpy()
  return np.asarray(x)


def canonical(state_dict) -> StateDict:
  """HF names without the base-model prefix and numpy values, so checkpoints of the bare model
  (as some original hub files are) and of the head models look alike; drops
  buffers and renames TF-era LayerNorm gamma/beta."""
  out = {}
  for k, v in state_dict.items():
    if _BUFFERS.search(k):
      continue
    name = re.sub(r'LayerNorm\.gamma$', 'LayerNorm.weight', _strip(k))
    name = re.sub(r'LayerNorm\.beta$', 'LayerNorm.bias', name)
    if name in out:
      raise ValueError(
        f'State dict holds {name!r} twice (with and without a prefix, or as '
        f'gamma/beta and weight/bias); last seen as {k!r}.'
      )
    out[name] = _to_numpy(v)
  return out


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


def _load_safetensors(path: pathlib.Path) -> dict:
  """The file's tensors as read-only memory maps (nothing is read until used). Parsed here rather
  than by safetensors.numpy, which cannot name bfloat16, the dtype of most recent large checkpoints."""
  with open(path, 'rb') as f:
    n = int.from_bytes(f.read(8), 'little')
    header = json.loads(f.read(n))
  data = np.memmap(path, np.uint8, 'r', offset=8 + n)
  return {
    k: data[t['data_offsets'][0] : t['data_offsets'][1]]
    .view(_SAFETENSORS_DTYPES[t['dtype']])
    .reshape(t['shape'])
    for k, t in header.items()
    if k != '__metadata__'
  }


def _load_file(path: pathlib.Path) -> dict:
  if path.suffix == '.safetensors':
    return _load_safetensors(path)
  import torch  # pylint: disable=import-outside-toplevel

  return torch.load(str(path), map_location='cpu', weights_only=True)


_WEIGHT_FILES = (
  'model.safetensors',
  'model.safetensors.index.json',
  'pytorch_model.bin',
  'pytorch_model.bin.index.json',
)


def load_state_dict(path) -> StateDict:
  """A weights file, a sharded `*.index.json`, or an HF directory holding either (safetensors
  preferred), as `canonical` numpy arrays."""
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
      raw.update(_load_file(path.parent / shard))
  else:
    raw = _load_file(path)
  return canonical(raw)


# ------------------------------------------------------------------------------------------------
# Params <-> state dicts.


def _expected_shapes(spec: Spec, cfg: M.ModelConfig) -> dict[str, tuple]:
  """Our param shapes, from tracing init (no compute, no memory)."""
  ids = jnp.zeros((1, 1), jnp.int32)
  cfg = dataclasses.replace(cfg, attention_impl='einsum', remat='none')  # shape-neutral, traceable
  tree = jax.eval_shape(lambda: nn.unbox(spec.module(cfg).init(jax.random.PRNGKey(0), ids)))
  return {k: v.shape for k, v in traverse_util.flatten_dict(tree['params'], sep='/').items()}


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


def from_hf(kind: str, state_dict, cfg: M.ModelConfig) -> dict:
  """Our params tree (plain numpy, `param_dtype`) from an HF state dict, all-or-nothing.

  Unstacked leaves may share memory with the state dict's tensors (no copy of a large model).
  """
  spec = _spec(kind)
  _check_cfg(kind, cfg)
  sd = canonical(state_dict)
  expected = _expected_shapes(spec, cfg)
  _fail(f'{kind} table does not match the model', errors=_table_errors(spec, cfg, expected))
  missing, mismatched, leaves, used = [], [], {}, set()
  for ours, hf, codec in _slots(spec, cfg):
    key = _strip(hf)
    if key not in sd and _strip(spec.fallback.get(hf, hf)) in sd:
      key = _strip(spec.fallback[hf])
    if key not in sd:
      missing.append(hf)
      continue
    used.add(key)
    want = _hf_shape(codec, [_leaf_shape(expected, leaf) for leaf in ours])
    if sd[key].shape != want:
      mismatched.append(f'{hf} {tuple(sd[key].shape)} != expected {want}')
      continue
    leaves.update(zip(ours, codec.split(sd[key])))
  untied = []
  for alias, main in _tied(spec, cfg).items():
    a, m = _strip(alias), _strip(main)
    if a in sd:
      used.add(a)
      if m in sd and (sd[a].shape != sd[m].shape or not np.array_equal(sd[a], sd[m])):
        untied.append(f'{alias} != {main}')
  unexpected = sorted(set(sd) - used)
  _fail(
    f'Cannot load {kind} state dict into {cfg}',
    missing=missing,
    unexpected=unexpected,
    shape_mismatch=mismatched,
    untied_weights=untied,
  )

  dtype = jnp.dtype(cfg.param_dtype)
  flat = {}
  for (path, i), v in leaves.items():
    if i is None:
      flat[path] = np.asarray(v, dtype)
    elif (
      i == 0
    ):  # scanned: stack all layers of the stack once (an encoder-decoder's two may differ in depth)
      n = sum(p == path for p, _ in leaves)
      flat[path] = np.stack([leaves[(path, j)] for j in range(n)]).astype(dtype)
  return traverse_util.unflatten_dict(flat, sep='/')


def to_hf(kind: str, params, cfg: M.ModelConfig) -> StateDict:
  """The HF state dict (full names, tied aliases included, as `model.state_dict()` has them)."""
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
  flat = {k: np.asarray(v) for k, v in flat.items()}
  out = {}
  for ours, hf, codec in _slots(spec, cfg):
    out[hf] = np.ascontiguousarray(
      codec.join([flat[p] if i is None else flat[p][i] for p, i in ours])
    )
  out.update({alias: out[main] for alias, main in _tied(spec, cfg).items()})
  return out


# ------------------------------------------------------------------------------------------------
# Directories.


def import_pretrained(directory, **overrides: Any) -> tuple[str, M.ModelConfig, dict]:
  """(kind, cfg, params) from a local HF model directory. `overrides` replace ModelConfig fields
  that do not change the math (scan_layers, dtype, remat, attention_impl, dropout...)."""
  directory = pathlib.Path(directory)
  kind, cfg = config_from_hf(json.loads((directory / 'config.json').read_text()))
  cfg = dataclasses.replace(cfg, **overrides)
  return kind, cfg, from_hf(kind, load_state_dict(directory), cfg)


def export_pretrained(
  kind: str, cfg: M.ModelConfig, params, directory, max_shard_bytes: int = 0, **hf_overrides: Any
) -> None:
  """config.json + model.safetensors that `transformers.AutoModel*.from_pretrained` loads; tied
  aliases are left out as `save_pretrained` does. With `max_shard_bytes`, weights go into
  `model-0000i-of-0000n.safetensors` files of at most that size (a tensor larger than it gets a
  file of its own) and `model.safetensors.index.json`, as HF writes large models. `hf_overrides`
  go into config.json."""
  import safetensors.numpy  # pylint: disable=import-outside-toplevel

  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  tied = _tied(_spec(kind), cfg)
  sd = {k: v for k, v in to_hf(kind, params, cfg).items() if k not in tied}
  config = config_to_hf(kind, cfg, **hf_overrides)
  (directory / 'config.json').write_text(json.dumps(config, indent=2) + '\n')
  save = lambda part, name: safetensors.numpy.save_file(
    part, str(directory / name), metadata={'format': 'pt'}
  )
  if not max_shard_bytes:
    save(sd, 'model.safetensors')
    return
  shards = [{}]
  for k, v in sd.items():
    if shards[-1] and sum(x.nbytes for x in shards[-1].values()) + v.nbytes > max_shard_bytes:
      shards.append({})
    shards[-1][k] = v
  names = [f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors' for i in range(len(shards))]
  for part, name in zip(shards, names):
    save(part, name)
  index = dict(
    metadata=dict(total_size=sum(v.nbytes for v in sd.values())),
    weight_map={k: name for part, name in zip(shards, names) for k in part},
  )
  (directory / 'model.safetensors.index.json').write_text(json.dumps(index, indent=2) + '\n')
