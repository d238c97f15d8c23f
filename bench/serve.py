"""Serving throughput: serve.py (continuous batching) under 1, 8 and 32 concurrent streaming
clients against sequential `lm.generate` calls of the same requests, in one invocation.

The model is a random GPT-2-shaped decoder written as an HF directory (default: GPT-2 small's
d=768, 12 layers, 12 heads, with an 8,192-token byte-level BPE trained on Python's own docs and
256 positions: 92M params);
requests are greedy, prompts of 12-48 tokens cut from those docs, `--max_tokens` new tokens each.
Both sides decode the same tokens (greedy; the script checks the texts are equal), so the
generated token count of each request is the sequential side's. Compilation is kept out of the
timings: `lm.generate` pads every prompt to the longest (one program) and runs once first; the
server gets every request once first (its prefill buckets).

Columns: tokens/s (generated tokens over wall time), latency (request sent -> last token) and
time to first token (first streamed text; sequential `lm.generate` streams nothing) p50 / p95,
and tokens/s over the sequential side's.

  python bench/serve.py                        # ~5 min on 2 cores
  python bench/serve.py --hidden=32 --layers=1 --heads=2 --vocab=300 --requests=2 \\
      --clients=1,2 --max_tokens=4             # smoke run (tests/test_bench.py)
"""

import concurrent.futures
import json
import logging
import os
import pydoc_data.topics
import socket
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import flax.linen as nn
import httpx
import jax
import jax.numpy as jnp
import numpy as np

from lm import generate as G
from lm import hf
from lm import models as M
from lm.data import tokenizer as tokenizer_lib

flags.DEFINE_integer('hidden', 768, 'n_embd.')
flags.DEFINE_integer('layers', 12, 'n_layer.')
flags.DEFINE_integer('heads', 12, 'n_head.')
flags.DEFINE_integer('vocab', 8192, 'BPE vocabulary (the model has as many rows).')
flags.DEFINE_integer('max_len', 256, "The model's positions.")
flags.DEFINE_integer('requests', 32, 'Requests per run.')
flags.DEFINE_integer('max_tokens', 64, 'New tokens per request.')
flags.DEFINE_list('clients', ['1', '8', '32'], 'Concurrent clients, one server run each.')
flags.DEFINE_integer('slots', 32, "serve.py's --slots.")
flags.DEFINE_integer(
  'cache_len', 128, "serve.py's --max_len: cache positions per slot (the longest request: 48 + 64)."
)
FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_model(directory):
  """A random GPT-2 HF directory with a trained tokenizer; returns (model, params, tokenizer)."""
  text = list(pydoc_data.topics.topics.values())
  tok = tokenizer_lib.train_tokenizer(text, 'bpe', FLAGS.vocab)
  tok.save(directory)
  cfg = M.ModelConfig(
    vocab_size=tok.vocab_size, hidden_size=FLAGS.hidden, num_layers=FLAGS.layers,
    num_heads=FLAGS.heads, mlp_dim=4 * FLAGS.hidden, max_len=FLAGS.max_len, type_vocab_size=0,
    pre_ln=True, activation='gelu_tanh', layer_norm_eps=1e-5, dropout_rate=0.0,
    attention_dropout_rate=0.0, initializer_range=0.02,
  )  # fmt: skip
  model = M.Decoder(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32)))['params']
  hf.export_pretrained('gpt2', cfg, params, directory)
  return model, params, tok


def prompts(tok):
  """`--requests` prompts of 12 to 48 tokens, cut from the docs (as token ids)."""
  ids = tok.encode(' '.join(pydoc_data.topics.topics.values()))
  rng = np.random.default_rng(0)
  out = []
  for _ in range(FLAGS.requests):
    n = int(rng.integers(12, 49))
    at = int(rng.integers(0, len(ids) - n))
    out.append(ids[at : at + n])
  return out


def sequential(model, params, tok, reqs):
  """(outputs, per-request seconds, wall seconds) of one `lm.generate` call per request."""
  width = max(len(p) for p in reqs)  # one compiled shape (left padding, as the engine's buckets)
  run = lambda p: G.generate(
    model, params, [p], max_new_tokens=FLAGS.max_tokens, eos_id=tok.eos_id, prompt_len=width
  )[0][0]  # noqa: E731
  run(reqs[0])  # compiles
  outs, lat = [], []
  start = time.perf_counter()
  for p in reqs:
    t = time.perf_counter()
    outs.append(run(p))
    lat.append(time.perf_counter() - t)
  return outs, lat, time.perf_counter() - start


def one_request(url, prompt):
  """(text, latency, time to first text) of one streamed greedy completion."""
  body = dict(model='m', prompt=prompt, max_tokens=FLAGS.max_tokens, temperature=0, stream=True)
  t0 = time.perf_counter()
  first, text = None, []
  with httpx.stream('POST', url + '/v1/completions', json=body, timeout=600) as r:
    r.raise_for_status()
    for line in r.iter_lines():
      if not line.startswith('data: ') or line == 'data: [DONE]':
        continue
      piece = json.loads(line[6:])['choices'][0]['text']
      if piece and first is None:
        first = time.perf_counter() - t0
      text.append(piece)
  return ''.join(text), time.perf_counter() - t0, first


def served(url, reqs, clients):
  """(texts, latencies, times to first token, wall seconds) of the requests sent by `clients`
  concurrent clients (each sends its next request when the last one is answered)."""
  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    results = list(pool.map(lambda p: one_request(url, p), reqs))
  wall = time.perf_counter() - start
  texts, lat, ttft = zip(*results)
  return list(texts), list(lat), [t for t in ttft if t is not None], wall


def start_server(directory):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  cmd = [sys.executable, os.path.join(ROOT, 'serve.py'), f'--checkpoint={directory}',
         f'--port={port}', f'--slots={FLAGS.slots}', f'--queue={4 * FLAGS.requests}',
         f'--max_len={FLAGS.cache_len}', '--name=m']  # fmt: skip
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  url = f'http://127.0.0.1:{port}'
  for _ in range(600):  # bounded: imports JAX and loads the model
    try:
      if httpx.get(url + '/health', timeout=1).status_code == 200:
        return proc, url
    except httpx.HTTPError:
      if proc.poll() is not None:
        raise RuntimeError(f'serve.py exited with {proc.returncode}') from None
      time.sleep(0.5)
  proc.kill()
  raise RuntimeError('serve.py did not come up in 5 minutes')


def row(name, clients, tokens, wall, lat, ttft, base):
  pct = lambda xs, q: f'{np.percentile(xs, q):.3f}' if xs else '-'  # noqa: E731
  tps = tokens / wall
  ratio = f'{tps / base:.2f}' if base else '1.00'
  print(
    f'{name:<10} {clients:>7} {tokens:>6} {wall:>8.3f} {tps:>9.1f} {pct(lat, 50):>8} '
    f'{pct(lat, 95):>8} {pct(ttft, 50):>8} {pct(ttft, 95):>8} {ratio:>6}',
    flush=True,
  )
  return tps


def main(argv):
  del argv
  logging.getLogger('httpx').setLevel(logging.WARNING)  # no line per request
  print(f'load average: {os.getloadavg()}', flush=True)
  with tempfile.TemporaryDirectory() as d:
    model, params, tok = make_model(d)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    print(
      f'model: GPT-2 shape d={FLAGS.hidden} L={FLAGS.layers} heads={FLAGS.heads} '
      f'vocab={tok.vocab_size} max_len={FLAGS.max_len} params={n_params / 1e6:.1f}M; '
      f'{FLAGS.requests} greedy requests x {FLAGS.max_tokens} new tokens, slots={FLAGS.slots} '
      f'x {FLAGS.cache_len} cache positions',
      flush=True,
    )
    reqs = prompts(tok)
    outs, lat, wall = sequential(model, params, tok, reqs)
    tokens = sum(len(o) for o in outs)
    want = [tok.decode(o) for o in outs]
    print(
      f'{"mode":<10} {"clients":>7} {"tokens":>6} {"wall_s":>8} {"tokens/s":>9} '
      f'{"lat_p50":>8} {"lat_p95":>8} {"ttft_p50":>8} {"ttft_p95":>8} {"x_seq":>6}'
    )
    base = row('sequential', 1, tokens, wall, lat, [], 0)
    proc, url = start_server(d)
    try:
      served(url, reqs, max(int(c) for c in FLAGS.clients))  # compiles every prompt bucket
      for c in FLAGS.clients:
        texts, lat, ttft, wall = served(url, reqs, int(c))
        same = sum(a == b for a, b in zip(texts, want))
        if same != len(want):
          print(f'server texts differ from lm.generate: {len(want) - same} of {len(want)}')
        row('server', int(c), tokens, wall, lat, ttft, base)
    finally:
      proc.terminate()
      proc.wait(120)
  print(f'load average: {os.getloadavg()}', flush=True)


if __name__ == '__main__':
  app.run(main)
