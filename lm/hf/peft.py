"""PEFT LoRA adapters <-> our LoRA params (`lm.models.lora`), and merged exports.

Our adapted `Dense` computes x W + b + (alpha / r) (x A) B with `lora_a` A [in, r] and `lora_b`
B [r, out]: PEFT's `LoraLayer` (`lora_B(lora_A(dropout(x))) * scaling`, scaling = alpha / r)
with `lora_A.weight` = A.T [r, in] and `lora_B.weight` = B.T [out, r], for a torch Linear and a
GPT-2 Conv1D alike (PEFT keeps Linear-shaped adapters on both). Which HF module each of our
kernels is comes from the family's table in `lm.hf` (the kernel rules), so every family the
converter knows is covered, and a codec that reorders a kernel's output columns reorders B's the
same way (B's out axis goes through the kernel's codec).

GPT-2's `c_attn` is one fused Conv1D for q, k and v where we have three kernels. An adapter on it
has one A [r, in] and B [3 d, r]: it imports as A_q = A_k = A_v = A with B cut in three (exact).
Ours export as one adapter of rank 3 r on `c_attn`: A = [A_q; A_k; A_v] and B block-diagonal
(`rank_pattern` 3 r and `alpha_pattern` 3 alpha keep the scaling alpha / r), which imports back
as the three rank-r adapters (a target left out is an all-zero block, dropped again on import).

Importing takes whatever PEFT can save with plain LoRA weights: per-module ranks and alphas
(`rank_pattern`, `alpha_pattern`), rsLoRA's alpha / sqrt(r), adapters on some layers or some
modules only. Our config has one rank and one scaling: smaller adapters are padded with zero
rows and columns to the largest rank and B is rescaled where a module's scaling differs; a
module of a target that the file leaves out gets zero adapters. All of that is exact. What
changes the function beyond A and B (DoRA, trained biases, modules_to_save, ...) or adapts
modules we do not have is refused in one line.
"""

import dataclasses
import functools
import json
import math
import pathlib
import re
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import traverse_util

from lm import models as M
from lm.hf import core
from lm.models import lora

CONFIG_FILE = 'adapter_config.json'
WEIGHTS_FILE = 'adapter_model.safetensors'
PREFIX = 'base_model.model.'  # PEFT's names: its wrapper, then the HF model's own
# Our Dense modules by name (inside 'attention', 'cross_attention', 'mlp') -> LoRA target
TARGET_OF = {
  'query': 'q',
  'key': 'k',
  'value': 'v',
  'out': 'o',
  'wi': 'mlp_in',
  'wi_gate': 'mlp_in',
  'wo': 'mlp_out',
}
BLOCKS = ('attention', 'cross_attention', 'mlp')
# Codecs of adapted kernels -> the torch module's weight layout: 'linear' [out, in], 'conv1d'
# [in, out]. None of them reorders the in axis, which A keeps as it is.
ORIENTATION = {core.LINEAR: 'linear', core.SAME: 'conv1d', core.QKV: 'conv1d'}
TASK_TYPES = {'t5': 'SEQ_2_SEQ_LM', 'bert': None}  # others: CAUSAL_LM
# LoraConfig fields that change the function beyond A and B: field -> its plain-LoRA values.
PLAIN = dict(
  use_dora=(False, None),
  lora_bias=(False, None),
  bias=('none', None),
  modules_to_save=(None, []),
  trainable_token_indices=(None, {}, []),
  layer_replication=(None, []),
  target_parameters=(None, []),
  use_qalora=(False, None),
  alora_invocation_tokens=(None, []),
  arrow_config=(None,),
  monteclora_config=(None,),
  kasa_config=(None,),
  use_bdlora=(None, False),
  lora_ga_config=(None,),
)
# init_lora_weights values that rewrite the base weights (W - s A B at init): such an adapter
# only fits its own modified base unless PEFT converted it on save.
BASE_CHANGING_INITS = ('pissa', 'olora', 'corda', 'loftq')


@dataclasses.dataclass(frozen=True)
class Site:
  """One adaptable HF module: its full name (as in the HF model's state dict), our Dense
  modules behind it (path, layer index into a scanned stack or None; several for a fused
  module), their targets, and the kernel's codec."""

  hf: str
  ours: tuple
  targets: tuple
  codec: core.Codec


def model_type_of(kind: str, cfg: M.ModelConfig) -> str:
  """The HF `model_type` that expresses a body (`lm.models` kind + config): BERT for an encoder,
  T5 for an encoder-decoder; a decoder is GPT-2 with learned positions, else Mistral with a
  sliding window, Qwen2 with q/k/v-only biases, and Llama otherwise."""
  if kind == 'encoder':
    return 'bert'
  if kind == 'encoder-decoder':
    return 't5'
  if kind != 'decoder':
    raise ValueError(f'model kind {kind!r}: use encoder, decoder or encoder-decoder.')
  if cfg.position == 'learned':
    return 'gpt2'
  if cfg.sliding_window:
    return 'mistral'
  return 'qwen2' if cfg.bias == 'qkv' else 'llama'


def sites(model_type: str, cfg: M.ModelConfig) -> list[Site]:
  """Every adaptable module of the model, from the family's table."""
  spec = core._spec(model_type)  # pylint: disable=protected-access
  out = []
  for leaves, hf, codec in core._slots(spec, lora.base_config(cfg)):  # pylint: disable=protected-access
    mods = [(p.rsplit('/', 1)[0], i) for p, i in leaves if p.endswith('/kernel')]
    if len(mods) != len(leaves) or not hf.endswith('.weight'):
      continue
    parts = [m.split('/') for m, _ in mods]
    if not all(len(p) > 1 and p[-2] in BLOCKS and p[-1] in TARGET_OF for p in parts):
      continue
    if codec not in ORIENTATION:
      raise ValueError(f'{model_type} {hf}: lm.hf.peft does not know the layout of its codec.')
    targets = tuple(TARGET_OF[p[-1]] for p in parts)
    out.append(Site(hf[: -len('.weight')], tuple(mods), targets, codec))
  return out


def _module_names(model_type: str, cfg: M.ModelConfig) -> set:
  """Every HF module holding a parameter (what a PEFT target name may match)."""
  spec = core._spec(model_type)  # pylint: disable=protected-access
  slots = core._slots(spec, lora.base_config(cfg))  # pylint: disable=protected-access
  return {hf.rsplit('.', 1)[0] for _, hf, _ in slots}


def _short_names(targeted: list, modules: set) -> dict:
  """{module: the shortest dotted suffix of its name that PEFT's `target_modules` matching
  (a name equal to it or ending in '.' + it) finds on targeted modules only}."""
  chosen = {}
  for name in targeted:
    parts = name.split('.')
    for n in range(1, len(parts) + 1):
      suffix = '.'.join(parts[-n:])
      hits = {m for m in modules if m == suffix or m.endswith('.' + suffix)}
      if hits <= set(targeted):
        chosen[name] = suffix
        break
  return chosen


def _unwrap(params):
  return params['params'] if set(params) == {'params'} else params


def _flat(params) -> dict:
  return traverse_util.flatten_dict(nn.unbox(_unwrap(params)), sep='/')


def _leaf(flat: dict, path: str, i: Optional[int]) -> np.ndarray:
  x = flat[path]
  return np.asarray(x if i is None else x[i])


# ------------------------------------------------------------------------------------------------
# Export.


def save_adapter(
  directory, model_type: str, cfg: M.ModelConfig, params, base_model_name_or_path: str = ''
) -> None:
  """adapter_config.json + adapter_model.safetensors of `params`' LoRA adapters, as PEFT's
  `save_pretrained` writes them: `peft.PeftModel.from_pretrained(hf_model, directory)` loads
  them onto the HF model of `model_type` (the base, as `lm.hf.export_pretrained` writes it)."""
  targets = lora.targets_of(cfg)
  flat = _flat(params)
  if not cfg.lora_rank or not any(k.endswith('/lora_a') for k in flat):
    raise ValueError(
      'no LoRA adapters to save (a run with lora.rank > 0 has them): export the model instead.'
    )
  r, alpha = cfg.lora_rank, cfg.lora_alpha
  adapted = [s for s in sites(model_type, cfg) if set(s.targets) & set(targets)]
  missing = [
    f'{m}/lora_a'
    for s in adapted
    for (m, _), t in zip(s.ours, s.targets)
    if t in targets and f'{m}/lora_a' not in flat
  ]
  if missing:
    raise ValueError(f'params lack adapters the config targets: {", ".join(missing[:4])}...')
  names = _short_names([s.hf for s in adapted], _module_names(model_type, cfg))
  kernels = _kernel_shapes(model_type, cfg)
  tensors, rank_pattern, alpha_pattern = {}, {}, {}
  for site in adapted:
    n = len(site.ours)
    a_blocks, b_blocks = [], []  # fused: block j is module j's adapter, zeros if untargeted
    for j, ((mod, i), target) in enumerate(zip(site.ours, site.targets)):
      if target in targets:
        a, b = _leaf(flat, f'{mod}/lora_a', i), _leaf(flat, f'{mod}/lora_b', i)
      else:  # a fused module's untargeted part: a zero block
        a = np.zeros((kernels[f'{mod}/kernel'][-2], r), np.float32)
        b = np.zeros((r, kernels[f'{mod}/kernel'][-1]), np.float32)
      a_blocks.append(a.T)
      if n > 1:
        b = np.concatenate([b if k == j else np.zeros_like(b) for k in range(n)])
      b_blocks.append(b)
    a_hf = np.concatenate(a_blocks)  # [n r, in]
    b_hf = site.codec.join(b_blocks)  # the kernel's layout with r in the in axis
    b_hf = b_hf if ORIENTATION[site.codec] == 'linear' else b_hf.T  # [out, n r]
    if n > 1:
      rank_pattern[names[site.hf]] = n * r
      alpha_pattern[names[site.hf]] = n * alpha
    for part, x in (('lora_A', a_hf), ('lora_B', b_hf)):
      tensors[f'{PREFIX}{site.hf}.{part}.weight'] = np.ascontiguousarray(x, np.float32)
  config = dict(
    peft_type='LORA',
    task_type=TASK_TYPES.get(model_type, 'CAUSAL_LM'),
    base_model_name_or_path=base_model_name_or_path,
    r=r,
    lora_alpha=alpha,
    lora_dropout=cfg.lora_dropout,
    target_modules=sorted(set(names.values())),
    rank_pattern=rank_pattern,
    alpha_pattern=alpha_pattern,
    bias='none',
    fan_in_fan_out=any(ORIENTATION[s.codec] == 'conv1d' for s in adapted),
    use_rslora=False,
    use_dora=False,
    init_lora_weights=True,
    modules_to_save=None,
    layers_to_transform=None,
    layers_pattern=None,
    inference_mode=True,
  )
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + '\n')
  safetensors.numpy.save_file(tensors, str(directory / WEIGHTS_FILE), metadata={'format': 'pt'})


def export_merged(
  directory,
  model_type: str,
  cfg: M.ModelConfig,
  params,
  tokenizer=None,
  **hf_overrides: Any,
) -> None:
  """The plain HF model of `params` with the adapters folded into the kernels (`lora.merge`;
  a quantized base is dequantized): config.json + model.safetensors, plus tokenizer.json when
  `tokenizer` is given (a decoder's config.json then names its bos / eos ids)."""
  merged = lora.merge(_unwrap(params), cfg)
  if tokenizer is not None and model_type not in ('t5', 'bert'):
    ids = dict(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id)
    hf_overrides = {**{k: v for k, v in ids.items() if v is not None}, **hf_overrides}
  core.export_pretrained(model_type, lora.base_config(cfg), merged, directory, **hf_overrides)
  if tokenizer is not None:
    tokenizer.save(str(directory))


# ------------------------------------------------------------------------------------------------
# Import.


def _read_config(directory: pathlib.Path) -> dict:
  path = directory / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f'{directory} has no {CONFIG_FILE}: not a PEFT adapter directory.')
  d = json.loads(path.read_text())
  if d.get('peft_type', 'LORA') != 'LORA':
    raise ValueError(f'{path}: peft_type={d["peft_type"]!r}; only LORA adapters load.')
  for key, ok in PLAIN.items():
    if d.get(key, ok[0]) not in ok:
      raise ValueError(f'{path}: {key}={d[key]!r} is not plain LoRA (supported: {ok[0]!r}).')
  init = str(d.get('init_lora_weights', True))
  if init.startswith(BASE_CHANGING_INITS):
    raise ValueError(
      f'{path}: init_lora_weights={init!r} changed the base weights: save the adapter with '
      "PEFT's path_initial_model_for_weight_conversion to make it apply to the original base."
    )
  return d


def _read_tensors(directory: pathlib.Path) -> dict:
  for name in (WEIGHTS_FILE, 'adapter_model.bin'):
    if (directory / name).exists():
      return core.load_state_dict(directory / name)
  raise FileNotFoundError(f'{directory} has no {WEIGHTS_FILE} (or adapter_model.bin).')


def _pattern(patterns: dict, name: str, default):
  """PEFT's `get_pattern_key`: the first key matching the end of the module's dotted name."""
  for key, value in patterns.items():
    if re.match(rf'(.*\.)?({key})$', name):
      return value
  return default


def load_adapter(directory, model_type: str, cfg: M.ModelConfig, params) -> tuple:
  """(cfg, params) with the PEFT LoRA adapter in `directory` (adapter_config.json +
  adapter_model.safetensors or .bin) on a base of `model_type`: cfg's lora fields set from the
  adapter, params the base's (any adapters they held replaced) plus `lora_a` / `lora_b` as
  float32 numpy arrays. The base may be quantized (`cfg.quant`)."""
  directory = pathlib.Path(directory)
  d = _read_config(directory)
  raw = _read_tensors(directory)
  by_module, other = {}, []
  for key, x in raw.items():
    name = key[len(PREFIX) :] if key.startswith(PREFIX) else key
    m = re.fullmatch(r'(.+)\.(lora_A|lora_B)(\.[^.]+)?\.weight', name)
    if m is None:
      other.append(key)
      continue
    by_module.setdefault(m.group(1), {})[m.group(2)] = np.asarray(x, np.float32)
  # PEFT's names are the HF model's; a base-model (bare) adapter lacks the family prefix.
  all_sites = sites(model_type, cfg)
  canon = lambda name: core._strip(name)  # noqa: E731  # pylint: disable=protected-access
  site_of = {canon(s.hf): s for s in all_sites}
  unknown = sorted(n for n in by_module if canon(n) not in site_of)
  if unknown:
    supported = sorted({s.hf.rsplit('.', 1)[-1] for s in all_sites})
    raise ValueError(
      f'{directory}: adapter on modules lm cannot adapt: {", ".join(unknown[:4])}'
      f'{"..." if len(unknown) > 4 else ""} ({model_type} adapts {", ".join(supported)}).'
    )
  if other:
    raise ValueError(f'{directory}: tensors beyond lora_A / lora_B weights: {", ".join(other)}.')
  rslora = bool(d.get('use_rslora', False))
  scale = lambda alpha, rank: alpha / (math.sqrt(rank) if rslora else rank)  # noqa: E731
  r0, alpha0 = int(d.get('r', 8)), float(d.get('lora_alpha', 8))
  rank_pattern, alpha_pattern = d.get('rank_pattern') or {}, d.get('alpha_pattern') or {}

  kernels = _kernel_shapes(model_type, cfg)
  adapters = {}  # (our module path, layer index) -> (a [in, rank], b [rank, out], scaling)
  for name, ab in by_module.items():
    site = site_of[canon(name)]
    if set(ab) != {'lora_A', 'lora_B'}:
      raise ValueError(f'{directory}: {name} has {sorted(ab)} without its pair.')
    a, b = ab['lora_A'], ab['lora_B']
    rank = _pattern(rank_pattern, name, r0)
    hf_shape = core._hf_shape(  # pylint: disable=protected-access
      site.codec, [kernels[f'{m}/kernel'][-2:] for m, _ in site.ours]
    )
    out_dim, in_dim = hf_shape if ORIENTATION[site.codec] == 'linear' else hf_shape[::-1]
    if a.shape != (rank, in_dim) or b.shape != (out_dim, rank):
      raise ValueError(
        f'{directory}: {name} has lora_A {a.shape} and lora_B {b.shape}; expected '
        f'{(rank, in_dim)} and {(out_dim, rank)} (rank from r and rank_pattern).'
      )
    s = scale(float(_pattern(alpha_pattern, name, alpha0)), rank)
    b_ours = site.codec.split(b if ORIENTATION[site.codec] == 'linear' else b.T)
    n = len(site.ours)
    # Fused (GPT-2 c_attn): block-diagonal B (as we export) splits into n adapters of rank/n;
    # anything else is one A shared by the n modules (exact either way).
    blocks = n > 1 and rank % n == 0
    if blocks:
      k = rank // n
      blocks = all(
        not np.any(np.delete(bj, np.s_[j * k : (j + 1) * k], axis=0)) for j, bj in enumerate(b_ours)
      )
    for j, (mod, bj) in enumerate(zip(site.ours, b_ours)):
      if blocks:
        k = rank // n
        adapters[mod] = (a[j * k : (j + 1) * k].T, bj[j * k : (j + 1) * k], s)
      else:
        adapters[mod] = (a.T, bj, s)
  if not adapters:
    raise ValueError(f'{directory}: the adapter holds no LoRA weights.')

  # Targets: those of the adapted modules, less any whose adapters are all zero (the blocks an
  # exported c_attn carries for a target that was left out).
  target_of = {m: t for s in all_sites for m, t in zip(s.ours, s.targets)}
  targets = {target_of[m] for m, (a, b, _) in adapters.items() if np.any(a) or np.any(b)}
  targets = targets or {target_of[m] for m in adapters}
  adapters = {m: v for m, v in adapters.items() if target_of[m] in targets}
  rank = max(a.shape[1] for a, _, _ in adapters.values())
  base_scale = scale(alpha0, r0)
  new_cfg = dataclasses.replace(
    cfg,
    lora_rank=rank,
    lora_alpha=alpha0 if (rank, rslora) == (r0, False) else base_scale * rank,
    lora_dropout=float(d.get('lora_dropout', 0.0)),
    lora_targets=','.join(t for t in lora.TARGETS if t in targets),
  )
  ours = new_cfg.lora_alpha / rank  # the scaling our Dense applies

  def fit(mod):
    a, b, s = adapters[mod]
    pad = rank - a.shape[1]
    a, b = np.pad(a, ((0, 0), (0, pad))), np.pad(b, ((0, pad), (0, 0)))
    return a, (b if math.isclose(s, ours, rel_tol=1e-12) else b * np.float32(s / ours))

  flat = {k: v for k, v in _flat(params).items() if not k.endswith(('/lora_a', '/lora_b'))}
  abstract = _abstract(model_type, new_cfg)
  base = {k: v for k, v in abstract.items() if not k.endswith(('/lora_a', '/lora_b'))}
  bad = sorted(set(base) ^ set(flat)) + [
    f'{k} {np.shape(flat[k])} != {v.shape}'
    for k, v in base.items()
    if k in flat and np.shape(flat[k]) != v.shape
  ]
  if bad:
    raise ValueError(f'params do not match the {model_type} config: {", ".join(bad[:6])}.')
  by_leaf = {}  # our adapter leaf -> [(layer index or None, module)]
  for s in all_sites:
    for m in s.ours:
      by_leaf.setdefault(m[0], []).append(m)
  for path, x in abstract.items():
    if not path.endswith(('/lora_a', '/lora_b')):
      continue
    mod, which = path.rsplit('/', 1)
    if mod not in by_leaf:
      raise ValueError(f'{model_type}: no HF module for our adapter {path}.')
    out = np.zeros(x.shape, x.dtype)
    for m in by_leaf[mod]:
      if m in adapters:
        value = fit(m)[0 if which == 'lora_a' else 1]
        if m[1] is None:
          out[...] = value
        else:
          out[m[1]] = value
    flat[path] = out
  return new_cfg, traverse_util.unflatten_dict(flat, sep='/')


@functools.lru_cache(maxsize=16)
def _abstract(model_type: str, cfg: M.ModelConfig) -> dict:
  """{our param path: ShapeDtypeStruct} of the model init makes, from tracing it (no compute)."""
  cfg = dataclasses.replace(cfg, attention_impl='einsum', remat='none')  # shape-neutral
  module = core.module(model_type, cfg)
  ids = jnp.zeros((1, 1), jnp.int32)
  return _flat(jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ids))['params'])


def _kernel_shapes(model_type: str, cfg: M.ModelConfig) -> dict:
  """Our param shapes of the plain (float, adapter-free) model: kernels are [in, out], with a
  leading layer axis in a scanned stack."""
  return {k: v.shape for k, v in _abstract(model_type, lora.base_config(cfg)).items()}
