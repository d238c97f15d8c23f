"""Generation equals HF `generate` token for token on a random tiny GPT-2, the KV cache equals
the uncached forward, sampling is seeded, and scan layers / a device mesh change nothing."""

import dataclasses
import functools
import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import numpy as np  # noqa: E402
import pytest  # noqa: E402

try:  # HF parity needs the hf extra; the tests of ours against ours run without it
  import torch
  import transformers
except ImportError:
  torch = transformers = None
needs_hf = pytest.mark.skipif(torch is None, reason='HF parity needs torch + transformers')

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from lm import generate as G  # noqa: E402
from lm import hf  # noqa: E402
from lm import models as M  # noqa: E402
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
  """Our decoder on the HF model's weights; without torch, on our own init at the same std."""
  if torch is None and scan_layers:  # the same weights, stacked through lm.hf's layout table
    model, params = _ours()
    cfg = dataclasses.replace(model.cfg, scan_layers=True)
    return M.Decoder(cfg), hf.gpt2_from_hf(hf.gpt2_to_hf(params, model.cfg), cfg)
  if torch is None:
    cfg = M.ModelConfig(
      vocab_size=96, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=128, max_len=64,
      type_vocab_size=0, pre_ln=True, activation='gelu_tanh', layer_norm_eps=1e-5,
      dropout_rate=0.0, attention_dropout_rate=0.0, initializer_range=0.3,
      scan_layers=scan_layers,
    )  # fmt: skip
    model = M.Decoder(cfg)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
    return model, nn.unbox(variables)['params']
  model = _hf_model()
  _, cfg = hf.config_from_hf(model.config)
  cfg = dataclasses.replace(cfg, scan_layers=scan_layers)
  params = jax.tree.map(jnp.asarray, hf.gpt2_from_hf(model.state_dict(), cfg))
  return M.Decoder(cfg), params


def _hf_generate(pad=PAD, **kwargs):
  ids, mask = G.left_pad(PROMPTS, pad)
  if 'max_length' not in kwargs:
    kwargs['max_new_tokens'] = N
  out = _hf_model().generate(
    torch.tensor(ids, dtype=torch.long),
    attention_mask=torch.tensor(mask),
    pad_token_id=pad,
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
  """A token the beams emit mid-sequence (HF's; ours without torch), so EOS really ends some
  beams early."""
  if torch is None:
    out = G.generate(*_ours(), PROMPTS, max_new_tokens=N, strategy='beam', num_beams=3)
    return int(out[0][0][2])
  seqs, _ = _hf_generate(num_beams=3, num_return_sequences=2)
  return int(seqs[0, 2])


@needs_hf
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


@needs_hf
@pytest.mark.parametrize(
  'length_penalty,eos,early_stopping',
  [
    (0.7, 'mid', False),
    *(
      pytest.param(*c, marks=pytest.mark.slow)
      for c in [(0.7, None, False), (1.0, 'mid', False), (2.0, 'mid', True)]
    ),
  ],
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


# Each constraint alone, then all together with the length given as HF's max_length. n-grams:
# the random model seldom repeats a bigram greedily, so greedy gets size 1 (every seen token)
# and, in the combination, a penalty below 1 that invites repeats for the n-gram ban to stop.
TEXT_FREE_PAD = 95  # a pad id that none of the texts below contains (see the n-gram note)
PROCESSOR_CASES = {
  'repetition_penalty': dict(repetition_penalty=1.5),
  'no_repeat_ngram': dict(no_repeat_ngram_size=1, beam=dict(no_repeat_ngram_size=2)),
  'min_new_tokens': dict(min_new_tokens=6, eos=True),
  'all_with_max_length': dict(
    repetition_penalty=0.8,
    no_repeat_ngram_size=2,
    min_new_tokens=4,
    eos=True,
    max_length=len(PROMPTS[0]) + N,
  ),
}


@needs_hf
@pytest.mark.parametrize('strategy', ['greedy', 'beam'])
@pytest.mark.parametrize(
  'case',
  [
    c if c == 'all_with_max_length' else pytest.param(c, marks=pytest.mark.slow)
    for c in PROCESSOR_CASES
  ],
)
def test_constraints_match_hf(case, strategy):
  """Repetition penalty, no-repeat n-grams, min new tokens and max_length give HF's tokens,
  greedy and beam, on the padded batch; and each case really changes HF's own output."""
  kw = dict(PROCESSOR_CASES[case])
  kw.update(kw.pop('beam', {}) if strategy == 'beam' else {})
  kw.pop('beam', None)
  eos = _eos() if kw.pop('eos', False) else None
  beam = dict(num_beams=3, num_return_sequences=2) if strategy == 'beam' else {}
  length = {'max_length': kw.pop('max_length')} if 'max_length' in kw else {'max_new_tokens': N}
  model, params = _ours()
  pad = TEXT_FREE_PAD
  ours = G.generate(
    model, params, PROMPTS, strategy=strategy, eos_id=eos, pad_id=pad, **length, **beam, **kw
  )
  hf_length = {} if 'max_new_tokens' in length else length
  ref, _ = _hf_generate(pad, eos_token_id=eos, **hf_length, **beam, **kw)
  assert _flat(ours) == _trim(ref, eos)
  assert _trim(_hf_plain(strategy, eos), eos) != _trim(ref, eos), f'{case} changed nothing'
  # HF's n-gram processor counts left padding as text, ours does not: they agree as long as
  # the pad id never occurs in the text, as here.
  assert all(pad not in row for row in PROMPTS + _flat(ours))


@functools.cache
def _hf_plain(strategy, eos):
  beam = dict(num_beams=3, num_return_sequences=2) if strategy == 'beam' else {}
  return _hf_generate(eos_token_id=eos, **beam)[0]


@needs_hf
@pytest.mark.parametrize('n', [1, 2, 3])
def test_constraint_processors_match_hf_on_random_histories(n):
  """`constrain` on the logits equals HF's three processors in HF's order, over histories from
  a 6-token alphabet (so n-grams repeat), with and without left padding before the prompt."""
  rng = np.random.default_rng(n)
  v, p, new, rows = 8, 5, 7, 16
  hist = rng.integers(0, 6, size=(rows, p + new))
  logits = rng.normal(size=(rows, v)).astype(np.float32) * 3
  procs = transformers.LogitsProcessorList(
    [
      transformers.RepetitionPenaltyLogitsProcessor(1.7),
      transformers.NoRepeatNGramLogitsProcessor(n),
      transformers.MinNewTokensLengthLogitsProcessor(p, 9, eos_token_id=4),
    ]
  )
  ref = procs(torch.tensor(hist), torch.tensor(logits)).numpy()
  s = G.Settings(
    max_new_tokens=new + 3,
    repetition_penalty=1.7,
    no_repeat_ngram_size=n,
    min_new_tokens=9,
    eos_id=4,
  )
  pad = 3  # left padding (id 7, never in the text) must change nothing
  ids = np.concatenate([np.full((rows, pad), 7), hist[:, :p]], 1)
  mask = np.concatenate([np.zeros((rows, pad)), np.ones((rows, p))], 1)
  slots, real = G._history(jnp.asarray(ids), jnp.asarray(mask), s)  # pylint: disable=protected-access
  slots = slots.at[:, pad + p : pad + p + new].set(hist[:, p:])
  ours = np.asarray(G.constrain(jnp.asarray(logits), slots, real, new, s))
  np.testing.assert_array_equal(np.isinf(ours), np.isinf(ref))
  assert np.isinf(ref).sum(1).min() >= 1  # the n-gram ban and the EOS ban both bit
  np.testing.assert_allclose(ours[~np.isinf(ours)], ref[~np.isinf(ref)], rtol=1e-6)


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
  if torch is None:
    return
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


@needs_hf
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


@pytest.mark.slow  # the fast tier's 3-minute budget
def test_scan_layers_same_tokens():
  """The cache gains a leading layer axis; beam reordering must find the batch axis anyway."""
  model, params = _ours(scan_layers=True)
  axes = G.cache_batch_axes(model)
  assert {a for a in jax.tree.leaves(axes, is_leaf=lambda x: x is None) if a is not None} == {1}
  assert {a for a in jax.tree.leaves(G.cache_batch_axes(_ours()[0])) if a is not None} == {0}
  for kw in (dict(), dict(strategy='beam', num_beams=3, num_return_sequences=2, eos_id=_eos())):
    ref = G.generate(*_ours(), PROMPTS, max_new_tokens=N, **kw)
    assert G.generate(model, params, PROMPTS, max_new_tokens=N, **kw) == ref


def test_bf16_params_decode_without_a_widened_copy():
  """bf16 params under the float32 compute dtype (a bf16 HF checkpoint as imported) give the
  tokens of the same weights widened to float32 up front, greedy and beam, and the compiled
  decode holds no float32 copy of the model: left to itself XLA hoists each weight's widening out
  of the decode loop, 2x the bf16 params besides them (`generate._loop`)."""
  cfg = dataclasses.replace(
    _ours()[0].cfg, vocab_size=1024, hidden_size=128, mlp_dim=512, param_dtype='bfloat16'
  )
  model = M.Decoder(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32)))['params']
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  wide = M.Decoder(dataclasses.replace(cfg, param_dtype='float32'))
  wide_params = jax.tree.map(lambda x: x.astype(jnp.float32), params)
  for kw in (dict(), dict(strategy='beam', num_beams=3, num_return_sequences=2, eos_id=_eos())):
    ref = G.generate(wide, wide_params, PROMPTS, max_new_tokens=N, **kw)
    assert G.generate(model, params, PROMPTS, max_new_tokens=N, **kw) == ref

  ids, mask = G.left_pad(PROMPTS, PAD)
  args = (model, params, ids, mask, jax.random.PRNGKey(0), G.Settings(max_new_tokens=N))
  temp = G._lean(G.decode.__wrapped__, True).lower(*args).compile().memory_analysis()
  widened = sum(x.size * 4 for x in jax.tree.leaves(params))  # 2.1 MB; one weight at a time:
  assert temp.temp_size_in_bytes < widened / 2, (temp.temp_size_in_bytes, widened)  # 0.6 MB


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
  with pytest.raises(ValueError, match='exactly one of max_new_tokens'):
    G.generate(model, params, PROMPTS, max_new_tokens=2, max_length=9)
  with pytest.raises(ValueError, match='exactly one of max_new_tokens'):
    G.generate(model, params, PROMPTS)
  with pytest.raises(ValueError, match='max_length=5 leaves no room'):
    G.generate(model, params, PROMPTS, max_length=len(PROMPTS[0]))
