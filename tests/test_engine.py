"""The continuous-batching engine (lm.serving.engine) gives every request what `lm.generate`
gives its prompt alone, whatever shares the batch and whenever it was admitted, on tiny random
GPT-2, Llama (scanned layers, grouped-query attention) and Mistral (sliding window) decoders;
short requests finish while long ones decode; the queue, cancellation and drain behave."""

import functools
import threading

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from lm import generate as G
from lm import models as M
from lm.serving.engine import Engine, QueueFull, Sampling, decode_step, prefill_into_slot

BASE = dict(
  vocab_size=96, hidden_size=32, num_layers=2, num_heads=4, max_len=64, type_vocab_size=0,
  pre_ln=True, dropout_rate=0.0, attention_dropout_rate=0.0, initializer_range=0.3,
)  # fmt: skip
KINDS = {
  'gpt2': dict(mlp_dim=128, activation='gelu_tanh', layer_norm_eps=1e-5),
  'llama': dict(
    mlp_dim=48, position='rope', norm='rmsnorm', mlp='swiglu', activation='silu',
    layer_norm_eps=1e-6, num_kv_heads=2, bias='none', tie_embeddings=False, scan_layers=True,
  ),
  'mistral': dict(
    mlp_dim=48, position='rope', norm='rmsnorm', mlp='swiglu', activation='silu',
    layer_norm_eps=1e-6, num_kv_heads=1, bias='none', tie_embeddings=False, sliding_window=5,
  ),
}  # fmt: skip
PROMPTS = [[5, 17, 42, 8, 3], [11, 60], list(range(1, 21)), [7] * 9, [33, 2, 90]]


@functools.cache
def _model(kind):
  model = M.Decoder(M.ModelConfig(**BASE, **KINDS[kind]))
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
  return model, nn.unbox(params)['params']


@functools.cache
def _greedy(kind, eos_id=None):
  """lm.generate's greedy continuations (40 tokens) of every prompt, from one batched, left-padded
  call: one compile per model instead of one per prompt length and budget."""
  model, params = _model(kind)
  out = G.generate(model, params, PROMPTS, max_new_tokens=40, eos_id=eos_id)
  return {tuple(p): o[0] for p, o in zip(PROMPTS, out)}


@functools.cache
def _alone(kind, prompt, n, **kw):
  """What lm.generate gives `prompt` alone: the first n greedy tokens, or a seeded sample."""
  if set(kw) <= {'eos_id'}:
    return _greedy(kind, **kw)[prompt][:n]
  model, params = _model(kind)
  return G.generate(model, params, [list(prompt)], max_new_tokens=n, **kw)[0][0]


@pytest.mark.slow
@pytest.mark.parametrize('kind', list(KINDS))
def test_greedy_equals_generate_with_staggered_admission(kind):
  """Two slots, five requests of mixed lengths and budgets, admitted as slots free up and some
  submitted mid-decode: each gets generate's tokens for its prompt alone."""
  model, params = _model(kind)
  eng = Engine(model, params, slots=2)
  budgets = [12, 4, 9, 6, 10]
  reqs = [eng.submit(p, Sampling(max_tokens=n)) for p, n in zip(PROMPTS[:3], budgets)]
  for _ in range(3):
    eng.step()
  reqs += [eng.submit(p, Sampling(max_tokens=n)) for p, n in zip(PROMPTS[3:], budgets[3:])]
  eng.run(reqs)
  for p, n, r in zip(PROMPTS, budgets, reqs):
    assert r.ids == _alone(kind, tuple(p), n), (p, n)
    assert r.finish_reason == 'length'


@pytest.mark.slow
def test_settings_per_request_and_eos():
  """Greedy rows next to sampled ones are unchanged; a seeded sample equals generate's; EOS ends
  a request (included) while the others go on; logprobs are the model's."""
  model, params = _model('gpt2')
  eng = Engine(model, params, slots=4)
  sample = dict(temperature=0.7, top_k=20, top_p=0.9)
  eos = _alone('gpt2', tuple(PROMPTS[1]), 10)[3]
  eng.eos_id = eos
  greedy = eng.submit(PROMPTS[0], Sampling(max_tokens=10))
  drawn = eng.submit(PROMPTS[0], Sampling(max_tokens=10, seed=3, **sample))
  stopped = eng.submit(PROMPTS[1], Sampling(max_tokens=10))
  eng.run([greedy, drawn, stopped])
  assert greedy.ids == _alone('gpt2', tuple(PROMPTS[0]), 10, eos_id=eos)
  assert drawn.ids == _alone(
    'gpt2', tuple(PROMPTS[0]), 10, eos_id=eos, seed=3, strategy='sample', **sample
  )
  assert stopped.ids == _alone('gpt2', tuple(PROMPTS[1]), 10, eos_id=eos)
  assert stopped.ids[-1] == eos and stopped.finish_reason == 'stop'
  logits = model.apply({'params': params}, jnp.array([PROMPTS[0] + greedy.ids[:1]]))
  logp = jax.nn.log_softmax(logits[0, -2])
  assert greedy.tokens[0].logprob == pytest.approx(float(logp[greedy.ids[0]]), abs=1e-4)
  assert greedy.tokens[0].top[0][0] == greedy.ids[0]


def test_short_request_finishes_while_long_one_decodes():
  model, params = _model('gpt2')
  eng = Engine(model, params, slots=2)
  long = eng.submit(PROMPTS[2], Sampling(max_tokens=40))
  for _ in range(5):
    eng.step()
  short = eng.submit(PROMPTS[1], Sampling(max_tokens=3))
  while not short.done:
    eng.step()
  assert not long.done and len(long.ids) < 15
  eng.run([long])
  assert long.ids == _alone('gpt2', tuple(PROMPTS[2]), 40)
  assert short.ids == _alone('gpt2', tuple(PROMPTS[1]), 3)


def test_stop_cancel_queue_and_errors():
  model, params = _model('gpt2')
  eng = Engine(model, params, slots=1, queue_size=2)
  ref = _alone('gpt2', tuple(PROMPTS[0]), 8)
  stop = eng.submit(PROMPTS[0], Sampling(max_tokens=8, stop=lambda ids: ids[-2:] == ref[2:4]))
  gone = eng.submit(PROMPTS[1], Sampling(max_tokens=8))
  with pytest.raises(QueueFull):
    eng.submit(PROMPTS[1])
  gone.cancel()
  eng.run([stop, gone])
  assert stop.ids == ref[:4] and stop.finish_reason == 'stop'
  assert gone.finish_reason == 'cancelled'
  for prompt, s in [([], Sampling()), ([1] * 60, Sampling(max_tokens=8)), ([500], Sampling())]:
    with pytest.raises(ValueError):
      eng.submit(prompt, s)


@pytest.mark.slow
def test_background_thread_serves_concurrent_submitters_and_drains():
  model, params = _model('gpt2')
  eng = Engine(model, params, slots=3).start()
  reqs = {}

  def client(i):
    reqs[i] = eng.submit(PROMPTS[i], Sampling(max_tokens=5 + i))

  threads = [threading.Thread(target=client, args=(i,)) for i in range(len(PROMPTS))]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  eng.shutdown(timeout=60)  # drains: every request finishes before the thread exits
  assert not eng._thread.is_alive()
  for i, r in reqs.items():
    assert r.done and r.ids == _alone('gpt2', tuple(PROMPTS[i]), 5 + i)
  with pytest.raises(QueueFull):
    eng.submit(PROMPTS[0])


@pytest.mark.slow
@pytest.mark.parametrize('on_mesh', [False, True])
def test_each_prefill_bucket_compiles_once(on_mesh):
  """Two prompts of one bucket, then the first again: one prefill program, one decode program,
  whether the params are plain arrays or placed on a mesh (as lm.pretrained loads them)."""
  model, params = _model('gpt2')
  if on_mesh:
    mesh = jax.sharding.Mesh(jax.devices()[:1], ('data',))
    params = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  eng = Engine(model, params, slots=5 + on_mesh)  # a slot count no other test compiles
  sizes = []
  for p in (PROMPTS[0], PROMPTS[4], PROMPTS[0]):
    assert eng.generate([p], Sampling(max_tokens=3)) == [_alone('gpt2', tuple(p), 3)]
    sizes.append((prefill_into_slot._cache_size(), decode_step._cache_size()))
  assert sizes[0] == sizes[1] == sizes[2]
