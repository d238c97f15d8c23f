"""Greedy decode speed: our jitted `lm.generate.decode` vs HF PyTorch `GPT2LMHeadModel.generate`.

Same weights on both sides (a random GPT-2, converted with `lm.hf`), same machine, same run.
Prints tokens/s per batch size, then the time of one decode step by position, which stays
flat for our fixed-size cache (HF's cache grows, so its attention cost does).

  python bench/decode.py                      # d=256, L=4, vocab 50257: ~2-3 min on 2 cores
  python bench/decode.py --new_tokens=64 --windows=32,48,64 --window=8   # smoke run
"""

import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from lm import generate as G
from lm import hf
from lm import models as M

flags.DEFINE_integer('hidden', 256, 'n_embd.')
flags.DEFINE_integer('layers', 4, 'n_layer.')
flags.DEFINE_integer('heads', 4, 'n_head.')
flags.DEFINE_integer('vocab', 50257, 'vocab_size.')
flags.DEFINE_integer('prompt_len', 32, 'Prompt tokens (the first decode position).')
flags.DEFINE_integer('new_tokens', 128, 'Generated tokens per row in the throughput runs.')
flags.DEFINE_list('batch_sizes', ['1', '8'], 'Batch sizes for the throughput table.')
flags.DEFINE_list('windows', ['32', '256', '480'], 'Starts of the per-step timing windows.')
flags.DEFINE_integer('window', 32, 'Steps per window.')
flags.DEFINE_integer(
  'torch_threads',
  0,
  'torch.set_num_threads (0: torch default, all cores, '
  'as JAX uses them; 1 helps torch on a heavily loaded shared machine).',
)
FLAGS = flags.FLAGS


def _models():
  torch.manual_seed(0)
  config = transformers.GPT2Config(
    vocab_size=FLAGS.vocab,
    n_embd=FLAGS.hidden,
    n_layer=FLAGS.layers,
    n_head=FLAGS.heads,
    n_positions=1024,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
    bos_token_id=None,
    eos_token_id=None,
  )
  torch_model = transformers.GPT2LMHeadModel(config).eval()
  _, cfg = hf.config_from_hf(config)
  params = jax.tree.map(jnp.asarray, hf.gpt2_from_hf(torch_model.state_dict(), cfg))
  return torch_model, M.Decoder(cfg), params


def _timed(fn, repeats=2):
  """Best of `repeats` after a warm-up call (which compiles ours)."""
  fn()
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best


def throughput(torch_model, model, params, batch):
  ids = np.random.default_rng(batch).integers(0, FLAGS.vocab, (batch, FLAGS.prompt_len), np.int32)
  mask = np.ones_like(ids)
  n = FLAGS.new_tokens
  s = G.Settings(max_new_tokens=n)  # no EOS: every run decodes exactly n tokens
  ours = _timed(
    lambda: G.decode(model, params, ids, mask, jax.random.PRNGKey(0), s).block_until_ready()
  )
  gen_cfg = transformers.GenerationConfig(
    max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None
  )
  t_ids = torch.tensor(ids, dtype=torch.long)
  with torch.no_grad():
    theirs = _timed(
      lambda: torch_model.generate(
        t_ids, attention_mask=torch.ones_like(t_ids), generation_config=gen_cfg
      )
    )
  return batch * n / ours, batch * n / theirs


def per_step_ms(torch_model, model, params, batch=1):
  """Mean ms of one decode step over windows of positions (one call per step, host included)."""
  starts = [int(w) for w in FLAGS.windows]
  last = max(starts) + FLAGS.window
  p = FLAGS.prompt_len
  ids = np.random.default_rng(0).integers(0, FLAGS.vocab, (batch, p), np.int32)
  prefill = jax.jit(G.prefill, static_argnums=(0, 4))
  step = jax.jit(G.step, static_argnums=0)

  def ours():
    _, cache, full_mask, pos = prefill(model, params, ids, np.ones_like(ids), last - p)
    tok, times = jnp.zeros((batch,), jnp.int32), []
    for i in range(last - p):
      t = time.perf_counter()
      logits, cache = step(model, params, cache, tok, pos + i, full_mask)
      tok = jnp.argmax(logits, -1).astype(jnp.int32).block_until_ready()
      times.append(time.perf_counter() - t)
    return times

  def theirs():
    with torch.no_grad():
      out = torch_model(torch.tensor(ids, dtype=torch.long), use_cache=True)
      tok, cache, times = out.logits[:, -1:].argmax(-1), out.cache, []
      for _ in range(last - p):
        t = time.perf_counter()
        out = torch_model(tok, cache=cache, use_cache=True)
        tok, cache = out.logits[:, -1:].argmax(-1), out.cache
        times.append(time.perf_counter() - t)
    return times

  ours()  # compile
  rows = []
  for times in (ours(), theirs()):
    rows.append([1e3 * np.mean(times[s - p : s - p + FLAGS.window]) for s in starts])
  return starts, rows


def main(argv):
  del argv
  if FLAGS.torch_threads:
    torch.set_num_threads(FLAGS.torch_threads)
  torch_model, model, params = _models()
  print(
    f'GPT-2 d={FLAGS.hidden} L={FLAGS.layers} heads={FLAGS.heads} vocab={FLAGS.vocab}, '
    f'prompt {FLAGS.prompt_len}, float32; {jax.devices()[0].platform} jax, '
    f'torch {torch.__version__} ({torch.get_num_threads()} threads)'
  )
  print(f'\ngreedy, {FLAGS.new_tokens} new tokens (tokens/s, best of 2 after warm-up)')
  print(f'{"batch":>5} {"ours":>10} {"HF torch":>10} {"ratio":>7}')
  for b in map(int, FLAGS.batch_sizes):
    ours, theirs = throughput(torch_model, model, params, b)
    print(f'{b:>5} {ours:>10.1f} {theirs:>10.1f} {ours / theirs:>6.2f}x')
  starts, (ours, theirs) = per_step_ms(torch_model, model, params)
  print(f'\nms per decode step at batch 1, mean over positions [s, s+{FLAGS.window})')
  print(f'{"s":>5} {"ours":>8} {"HF torch":>9}')
  for s, o, t in zip(starts, ours, theirs):
    print(f'{s:>5} {o:>8.2f} {t:>9.2f}')


if __name__ == '__main__':
  app.run(main)
