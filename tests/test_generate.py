"""Generation equals HF `generate` token for token on a random tiny GPT-2, the KV cache equals
the uncached forward, sampling is seeded, and scan layers / a device mesh change nothing."""

import dataclasses
import functools
import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from lm import generate as G  # noqa: E402
from lm import hf  # noqa: E402
from lm import model as M  # noqa: E402
from lm import sharding  # noqa: E402

PROMPTS = [[5, 17, 42, 8, 3], [11, 60]]  # different lengths: exercises left padding
N = 12
PAD = 0


@functools.cache
def _hf_model():
  """Random GPT-2 with init std 0.3: at HF's 0.02 logits are nearly flat and greedy repeats."""
  torch.manual_seed(0)
  config = transformers.GPT2Config(
    vocab_size=96,
    n_embd=32,
    n_layer=2,
    n_head=4,
    n_positions=64,
    initializer_range=0.3,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
    bos_token_id=None,
    eos_token_id=None,
  )
  return transformers.GPT2LMHeadModel(config).eval()


@functools.cache
def _ours(scan_layers=False):
  model = _hf_model()
  _, cfg = hf.config_from_hf(model.config)
  cfg = dataclasses.replace(cfg, scan_layers=scan_layers)
  params = jax.tree.map(jnp.asarray, hf.gpt2_from_hf(model.state_dict(), cfg))
  return M.Decoder(cfg), params


def _hf_generate(**kwargs):
  ids, mask = G.left_pad(PROMPTS, PAD)
  out = _hf_model().generate(
    torch.tensor(ids, dtype=torch.long),
    attention_mask=torch.tensor(mask),
    max_new_tokens=N,
    pad_token_id=PAD,
    do_sample=False,
    **kwargs,
  )
  if hasattr(out, 'sequences'):
    return out.sequences[:, ids.shape[1] :].numpy(), out.sequences_scores.numpy()
  return out[:, ids.shape[1] :].numpy(), None


def _trim(rows, eos):
  """HF pads finished rows with pad_token_id, or with EOS when pad_token_id is 0 (falsy)."""
  return [G._trim(r, -1 if eos is None else eos) for r in rows]  # pylint: disable=protected-access


def _flat(out):
  return [seq for per_prompt in out for seq in per_prompt]


@functools.cache
def _eos():
  """A token HF's beams emit mid-sequence, so EOS really ends some beams early."""
  seqs, _ = _hf_generate(num_beams=3, num_return_sequences=2)
  return int(seqs[0, 2])


@pytest.mark.parametrize('eos', [None, 'mid'])
def test_greedy_matches_hf(eos):
  eos = _eos() if eos else None
  model, params = _ours()
  ours = _flat(G.generate(model, params, PROMPTS, max_new_tokens=N, eos_id=eos, pad_id=PAD))
  ref, _ = _hf_generate(eos_token_id=eos)
  assert ours == _trim(ref, eos)
  if eos is None:
    assert all(len(set(r)) > 3 for r in ours), f'degenerate model output {ours}'
  else:
    assert len(ours[0]) < N and ours[0][-1] == eos


@pytest.mark.parametrize(
  'length_penalty,eos,early_stopping',
  [(0.7, None, False), (0.7, 'mid', False), (1.0, 'mid', False), (2.0, 'mid', True)],
)
def test_beam_matches_hf(length_penalty, eos, early_stopping):
  eos = _eos() if eos else None
  model, params = _ours()
  kw = dict(num_beams=3, length_penalty=length_penalty, early_stopping=early_stopping)
  ours = G.generate(
    model,
    params,
    PROMPTS,
    max_new_tokens=N,
    strategy='beam',
    eos_id=eos,
    pad_id=PAD,
    num_return_sequences=2,
    **kw,
  )
  ref, ref_scores = _hf_generate(
    eos_token_id=eos, num_return_sequences=2, return_dict_in_generate=True, output_scores=True, **kw
  )
  assert [len(o) for o in ours] == [2, 2]
  assert _flat(ours) == _trim(ref, eos)
  if eos is not None:
    assert any(s[-1] == eos and len(s) < N for s in _flat(ours)), 'EOS never ended a beam'
  ids, mask = G.left_pad(PROMPTS, PAD)
  s = G.Settings(max_new_tokens=N, strategy='beam', eos_id=-1 if eos is None else eos, **kw)
  _, scores = G.beam_search(model, params, ids, mask, s)
  np.testing.assert_allclose(np.asarray(scores)[:, :2].reshape(-1), ref_scores, rtol=1e-5)


def test_cached_logits_equal_uncached():
  """Prefill + one-token steps reproduce the full forward (ours and HF's) at every position."""
  model, params = _ours()
  ids, mask = G.left_pad(PROMPTS, PAD)
  prefill = jax.jit(G.prefill, static_argnums=(0, 4))
  step = jax.jit(G.step, static_argnums=0)
  logits, cache, full_mask, pos = prefill(model, params, ids, mask, N)
  steps, tokens = [logits], []
  for i in range(N - 1):
    tokens.append(jnp.argmax(steps[-1], -1).astype(jnp.int32))
    logits, cache = step(model, params, cache, tokens[-1], pos + i, full_mask)
    steps.append(logits)
  cached = np.stack(steps, 1)  # [B, N, V]: predictions after the prompt and each new token
  seq = np.concatenate([ids, np.stack(tokens, 1)], 1)
  seq_mask = np.asarray(full_mask[:, : seq.shape[1]])
  positions = np.maximum(np.cumsum(seq_mask, 1) - 1, 0)
  full = model.apply({'params': params}, seq, positions=positions, attention_mask=seq_mask)
  p = ids.shape[1]
  np.testing.assert_allclose(cached, np.asarray(full)[:, p - 1 :], atol=1e-5, rtol=1e-5)
  with torch.no_grad():
    ref = _hf_model()(
      torch.tensor(seq, dtype=torch.long),
      attention_mask=torch.tensor(seq_mask),
      position_ids=torch.tensor(positions),
    ).logits
  np.testing.assert_allclose(cached, ref.numpy()[:, p - 1 :], atol=1e-4, rtol=1e-4)


def test_sampling_seeded_and_top_k_1_is_greedy():
  model, params = _ours()
  sample = functools.partial(
    G.generate,
    model,
    params,
    PROMPTS,
    max_new_tokens=N,
    strategy='sample',
    temperature=1.5,
    top_p=0.9,
    num_return_sequences=3,
  )
  a, b, c = sample(seed=0), sample(seed=0), sample(seed=1)
  assert a == b and a != c
  assert [len(x) for x in a] == [3, 3] and all(len(s) == N for s in _flat(a))
  assert a[0][0] != a[0][1], 'return sequences of one prompt should be independent draws'
  greedy = G.generate(model, params, PROMPTS, max_new_tokens=N)
  top1 = G.generate(model, params, PROMPTS, max_new_tokens=N, strategy='sample', top_k=1, seed=3)
  assert top1 == greedy


@pytest.mark.parametrize('temperature,top_k,top_p', [(0.7, 5, 1.0), (1.3, 0, 0.6), (1.0, 10, 0.8)])
def test_logits_processors_match_hf(temperature, top_k, top_p):
  """Same survivors and values as HF's warpers applied in HF's order."""
  logits = np.random.default_rng(0).normal(size=(4, 96)).astype(np.float32) * 3
  procs = [transformers.TemperatureLogitsWarper(temperature)]
  procs += [transformers.TopKLogitsWarper(top_k)] if top_k else []
  procs += [transformers.TopPLogitsWarper(top_p)] if top_p < 1 else []
  ref = transformers.LogitsProcessorList(procs)(None, torch.tensor(logits)).numpy()
  s = G.Settings(
    max_new_tokens=1, strategy='sample', temperature=temperature, top_k=top_k, top_p=top_p
  )
  ours = np.asarray(G.process_logits(jnp.asarray(logits), s))
  np.testing.assert_array_equal(np.isinf(ours), np.isinf(ref))
  np.testing.assert_allclose(ours[~np.isinf(ours)], ref[~np.isinf(ref)], rtol=1e-6)


def test_scan_layers_same_tokens():
  """The cache gains a leading layer axis; beam reordering must find the batch axis anyway."""
  model, params = _ours(scan_layers=True)
  axes = G.cache_batch_axes(model)
  assert {a for a in jax.tree.leaves(axes, is_leaf=lambda x: x is None) if a is not None} == {1}
  assert {a for a in jax.tree.leaves(G.cache_batch_axes(_ours()[0])) if a is not None} == {0}
  for kw in (dict(), dict(strategy='beam', num_beams=3, num_return_sequences=2, eos_id=_eos())):
    ref = G.generate(*_ours(), PROMPTS, max_new_tokens=N, **kw)
    assert G.generate(model, params, PROMPTS, max_new_tokens=N, **kw) == ref


@pytest.mark.slow  # an 8-device mesh compile
@pytest.mark.skipif(jax.device_count() < 8, reason='needs 8 (simulated) devices')
def test_mesh_same_tokens():
  mesh = sharding.make_mesh((2, 2, 2))  # 4-way batch: the 2 prompts get padded with dummies
  model, params = _ours()
  for kw in (dict(), dict(strategy='beam', num_beams=2, eos_id=_eos())):
    ref = G.generate(model, params, PROMPTS, max_new_tokens=N, **kw)
    assert G.generate(model, params, PROMPTS, max_new_tokens=N, mesh=mesh, **kw) == ref


def test_bad_arguments():
  model, params = _ours()
  with pytest.raises(ValueError, match='num_return_sequences'):
    G.generate(
      model, params, PROMPTS, max_new_tokens=2, strategy='beam', num_beams=2, num_return_sequences=3
    )
  with pytest.raises(ValueError, match='max_len'):
    G.generate(model, params, PROMPTS, max_new_tokens=64)
  with pytest.raises(ValueError, match='greedy'):
    G.generate(model, params, PROMPTS, max_new_tokens=2, num_return_sequences=2)
