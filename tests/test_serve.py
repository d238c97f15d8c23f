"""serve.py on 127.0.0.1, queried with the real `openai` client: greedy completions and chat
equal `lm.generate`'s tokens, streaming gives the same text, concurrent requests of different
lengths and settings each get what they get alone, bad input is a 4xx and the server goes on,
and SIGTERM lets an in-flight request finish before the process exits."""

import concurrent.futures
import functools
import json
import os
import pydoc_data.topics
import signal
import socket
import subprocess
import sys
import time

import flax.linen as nn
import httpx
import jax
import jax.numpy as jnp
import numpy as np
import openai
import pytest

from lm import generate as G
from lm import hf
from lm import losses
from lm import models as M
from lm.models import t5
from lm.data import tokenizer as tokenizer_lib
from lm.serving import chat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TINY = {}  # model -> (directory, params, tokenizer, config), for the cached references
PROMPTS = ['The quick brown fox', 'In the beginning', 'Python is a programming language that']


# ChatML, as Qwen2's tokenizer_config.json has it (system default, generation prompt).
CHATML = (
  "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
  "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
  "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Llama-2-like: bos_token, strict role alternation through raise_exception, strip.
ALTERNATING = (
  '{{ bos_token }}{% for message in messages %}'
  "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
  "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
  "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] | trim + ' [/INST]' }}"
  "{% else %}{{ ' ' + message['content'] | trim + eos_token }}{% endif %}{% endfor %}"
)
CHATS = [
  [{'role': 'user', 'content': 'Hello there'}],
  [
    {'role': 'system', 'content': 'You are terse.'},
    {'role': 'user', 'content': 'Hi'},
    {'role': 'assistant', 'content': 'Hello'},
    {'role': 'user', 'content': 'How are you?'},
  ],
]


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  """(HF directory, model, params, tokenizer): a tiny random GPT-2 with a trained BPE tokenizer
  and the ChatML template in its tokenizer_config.json."""
  d = tmp_path_factory.mktemp('tiny_gpt2')
  text = list(pydoc_data.topics.topics.values())[:200]
  tok = tokenizer_lib.train_tokenizer(text, 'bpe', 300)
  tok.save(str(d))
  specials = dict(bos_token='<|endoftext|>', eos_token='<|endoftext|>')
  (d / 'tokenizer_config.json').write_text(json.dumps(dict(specials, chat_template=CHATML)))
  cfg = M.ModelConfig(
    vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=128, max_len=128,
    type_vocab_size=0, pre_ln=True, activation='gelu_tanh', layer_norm_eps=1e-5,
    dropout_rate=0.0, attention_dropout_rate=0.0, initializer_range=0.3,
  )  # fmt: skip
  model = M.Decoder(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32)))['params']
  hf.export_pretrained('gpt2', cfg, params, d)
  _TINY[model] = (d, params, tok, cfg)
  return d, model, params, tok


def _hf_tokenizer(d, template=None):
  import transformers

  hf_tok = transformers.AutoTokenizer.from_pretrained(d)
  if template:
    hf_tok.chat_template = template
  return hf_tok


def test_chat_template_renders_as_transformers(tiny):
  """A directory's chat template gives the prompt ids transformers' apply_chat_template(...,
  add_generation_prompt=True) gives, for ChatML and a bos / raise_exception template; a chat
  the template refuses is a ValueError."""
  d, _, _, tok = tiny
  assert chat.find_template(None, str(d)) == CHATML
  for template in (CHATML, ALTERNATING):
    ours = chat.ChatFormat(tok, template, str(d))
    hf_tok = _hf_tokenizer(d, template)
    for msgs in CHATS[:1] + [CHATS[1][1:]]:
      want = hf_tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=False)
      assert ours(msgs) == list(want)
  with pytest.raises(ValueError, match='alternate'):
    chat.ChatFormat(tok, ALTERNATING, str(d))(CHATS[1][1:2] * 2)


def test_sft_chat_format_without_a_template(tiny):
  """No template: the SFT chat format of lm.data.text_to_text, written out here by hand
  ([bos]system\n\nUser: ...\nAssistant: ...[eos]\nUser: ...\nAssistant:)."""
  tok = tiny[3]
  eos = tok.eos_id
  want = (
    [tok.bos_id]
    + tok.encode('You are terse.\n\n')
    + tok.encode('User: Hi\nAssistant:')
    + tok.encode(' Hello')
    + [eos]
    + tok.encode('\nUser: How are you?\nAssistant:')
  )
  assert chat.ChatFormat(tok)(CHATS[1]) == want
  assert chat.ChatFormat(tok)(CHATS[0]) == [tok.bos_id] + tok.encode(
    'User: Hello there\nAssistant:'
  )
  with pytest.raises(ValueError):
    chat.ChatFormat(tok)([{'role': 'tool', 'content': 'x'}])


@pytest.fixture(scope='module')
def server(tiny):
  """(openai client, base url, process, model, params, tokenizer, HF directory) of `tiny` being
  served."""
  d, model, params, tok = tiny
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  proc = subprocess.Popen(
    [sys.executable, os.path.join(ROOT, 'serve.py'), f'--checkpoint={d}', f'--port={port}',
     '--slots=4', '--timeout=120', '--name=m'],
    cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
  )  # fmt: skip
  url = f'http://127.0.0.1:{port}'
  for _ in range(240):  # bounded: the process imports JAX and loads the model
    try:
      if httpx.get(url + '/health', timeout=1).status_code == 200:
        break
    except httpx.HTTPError:
      assert proc.poll() is None, proc.stdout.read()
      time.sleep(0.5)
  client = openai.OpenAI(base_url=url + '/v1', api_key='none', timeout=120, max_retries=0)
  yield client, url, proc, model, params, tok, d
  if proc.poll() is None:
    proc.kill()
    proc.wait(30)


def _alone(server, text, n):
  """lm.generate's greedy continuation of a text (or of prompt ids), decoded."""
  tok = server[5]
  ids = tok.encode(text) if isinstance(text, str) else list(text)
  return tok.decode(_greedy(server[3], tuple(ids))[:n])


@functools.cache
def _greedy(model, ids):
  """The longest greedy continuation the context allows: the first n tokens of it are the
  n-token one, so every budget shares one compiled program per 16-token prompt width."""
  _, params, tok, _ = _TINY[model]
  width = -(-len(ids) // 16) * 16
  out = G.generate(
    model, params, [list(ids)], max_new_tokens=128 - width, eos_id=tok.eos_id, prompt_len=width
  )
  return out[0][0]


def _chat_ids(server, msgs):
  hf_tok = _hf_tokenizer(server[6])
  return list(hf_tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=False))


@pytest.mark.slow
def test_models_and_greedy_completions_equal_generate(server):
  client = server[0]
  assert [m.id for m in client.models.list().data] == ['m']
  for p in PROMPTS:
    r = client.completions.create(model='m', prompt=p, max_tokens=10, temperature=0)
    assert r.choices[0].text == _alone(server, p, 10)
  msgs = CHATS[0]  # the directory's ChatML template, as transformers renders it
  r = client.chat.completions.create(model='m', messages=msgs, max_tokens=8, temperature=0)
  assert r.choices[0].message.content == _alone(server, _chat_ids(server, msgs), 8)


@pytest.mark.slow
def test_streaming_n_logprobs_echo(server):
  client = server[0]
  p = PROMPTS[0]
  chunks = client.completions.create(model='m', prompt=p, max_tokens=10, temperature=0, stream=True)
  assert ''.join(c.choices[0].text for c in chunks) == _alone(server, p, 10)
  msgs = [{'role': 'user', 'content': 'Hi'}]
  chunks = client.chat.completions.create(
    model='m', messages=msgs, max_tokens=8, temperature=0, stream=True
  )
  text = ''.join(c.choices[0].delta.content or '' for c in chunks if c.choices)
  assert text == _alone(server, _chat_ids(server, msgs), 8)
  r = client.completions.create(
    model='m', prompt=p, max_tokens=5, temperature=0, n=2, logprobs=3, echo=True
  )
  assert [c.text for c in r.choices] == [p + _alone(server, p, 5)] * 2
  lp = r.choices[0].logprobs
  assert len(lp.token_logprobs) > 5 and lp.token_logprobs[0] is None  # echo scores the prompt
  assert all(1 <= len(t) <= 3 for t in lp.top_logprobs[1:])  # byte pieces may share a key
  seeded = [
    client.completions.create(model='m', prompt=p, max_tokens=8, temperature=0.8, seed=7)
    .choices[0]
    .text
    for _ in range(2)
  ]
  assert seeded[0] == seeded[1]


@pytest.mark.slow
def test_echo_scores_the_prompt_as_lm_eval_reads_it(server):
  """lm-eval's local-completions loglikelihood request (token ids, echo, max_tokens 1,
  logprobs 1): the prompt's log-probs equal HF transformers' on the same directory, and its
  is-greedy test (token log-prob == max of top_logprobs) agrees with transformers' argmax. With
  max_tokens 0 the echo is the prompt alone, scored as `lm.losses.token_logps` scores it."""
  import torch
  import transformers

  client, url, _, model, params, tok, d = server
  ctx = tok.encode(PROMPTS[2])
  greedy = G.generate(model, params, [ctx], max_new_tokens=4)[0][0]
  prompts = [ctx + greedy, ctx + tok.encode(' zebra piano')]
  body = dict(model='m', prompt=prompts, temperature=0, max_tokens=1, logprobs=1, echo=True)
  choices = httpx.post(url + '/v1/completions', json=body, timeout=60).json()['choices']
  hf_model = transformers.GPT2LMHeadModel.from_pretrained(d).eval()
  seen_greedy = []
  for p, c in zip(prompts, sorted(choices, key=lambda c: c['index'])):
    with torch.no_grad():
      logp = torch.log_softmax(hf_model(torch.tensor([p])).logits[0].double(), -1)
    want = [float(logp[t, p[t + 1]]) for t in range(len(p) - 1)]
    lp = c['logprobs']
    assert len(lp['token_logprobs']) == len(p) + 1 and lp['token_logprobs'][0] is None
    assert lp['token_logprobs'][1 : len(p)] == pytest.approx(want, abs=1e-5)
    assert lp['tokens'][: len(p)] == [tok.decode([t]) for t in p]
    # lm-eval's parse_logprobs over the continuation (ctxlen to the generated token)
    got = lp['token_logprobs'][len(ctx) : -1]
    is_greedy = all(
      t == max(top.values()) for t, top in zip(got, lp['top_logprobs'][len(ctx) : -1])
    )
    assert sum(got) == pytest.approx(sum(want[len(ctx) - 1 :]), abs=1e-4)
    assert is_greedy == all(
      int(logp[t].argmax()) == p[t + 1] for t in range(len(ctx) - 1, len(p) - 1)
    )
    seen_greedy.append(is_greedy)
  assert seen_greedy == [True, False]
  r = client.completions.create(model='m', prompt=ctx, max_tokens=0, echo=True, logprobs=2)
  assert r.choices[0].text == tok.decode(ctx)
  logits = model.apply({'params': params}, jnp.array([ctx]))
  want = losses.token_logps(logits, jnp.array([ctx]))[0]
  assert r.choices[0].logprobs.token_logprobs[1:] == pytest.approx(want.tolist(), abs=1e-5)
  with pytest.raises(openai.BadRequestError):
    client.completions.create(model='m', prompt=ctx, max_tokens=0)


@pytest.mark.slow
def test_concurrent_mixed_requests_each_get_their_own(server):
  client = server[0]
  jobs = [(p, n) for p in PROMPTS for n in (3, 12)]

  def one(job):
    p, n = job
    return (
      client.completions.create(model='m', prompt=p, max_tokens=n, temperature=0).choices[0].text
    )

  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    sampled = pool.submit(
      lambda: client.completions.create(
        model='m', prompt=PROMPTS[0], max_tokens=20, temperature=1.0, top_p=0.9
      )
    )
    outs = list(pool.map(one, jobs))
    sampled.result()
  assert outs == [_alone(server, p, n) for p, n in jobs]


@pytest.mark.slow
def test_short_request_overtakes_a_long_one(server):
  """Continuous batching through the server: a short streamed request sent while a long one
  decodes gets its first token and its end while the long one still has many tokens to go."""
  client = server[0]
  long_n, short_n = 110, 3
  seen = {'long': [], 'short': []}  # (time, text) per streamed chunk

  def stream(key, prompt, n):
    chunks = client.completions.create(
      model='m', prompt=prompt, max_tokens=n, temperature=0, stream=True
    )
    for c in chunks:
      seen[key].append((time.monotonic(), c.choices[0].text, c.choices[0].finish_reason))

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    long = pool.submit(stream, 'long', PROMPTS[1], long_n)
    for _ in range(600):  # bounded: until the long one has streamed a few chunks
      if len(seen['long']) >= 5 or long.done():
        break
      time.sleep(0.01)
    pool.submit(stream, 'short', PROMPTS[0], short_n).result(timeout=120)
    long.result(timeout=120)
  short_first, short_end = seen['short'][0][0], seen['short'][-1][0]
  long_end = seen['long'][-1][0]
  # the long one's chunks that had arrived when the short one ended: far from all of them
  long_by_then = sum(t <= short_end for t, *_ in seen['long'])
  assert short_first < short_end < long_end
  assert long_by_then < len(seen['long']) - 20, (long_by_then, len(seen['long']))
  assert seen['long'][-1][2] == 'length'
  assert ''.join(x[1] for x in seen['long']) == _alone(server, PROMPTS[1], long_n)
  assert ''.join(x[1] for x in seen['short']) == _alone(server, PROMPTS[0], short_n)


@pytest.mark.slow
def test_bad_input_is_4xx_and_server_goes_on(server):
  client, url = server[:2]
  bad = [
    b'{"prompt": "hi", "max_tokens": 4',  # not JSON
    b'{"prompt": "hi", "max_tokens": 4, "frobnicate": 1}',  # unknown field
    b'{"prompt": "hi", "max_tokens": 0}',
    b'{"prompt": "hi", "max_tokens": 4, "temperature": "hot"}',
    b'{"prompt": "' + b'hello ' * 300 + b'", "max_tokens": 4}',  # longer than the model
  ]
  for body in bad:
    r = httpx.post(
      url + '/v1/completions', content=body, headers={'content-type': 'application/json'}
    )
    assert 400 <= r.status_code < 500 and r.json()['error']['message'], body
  with pytest.raises(openai.BadRequestError):
    client.chat.completions.create(model='m', messages=[], max_tokens=4)
  with pytest.raises(openai.NotFoundError, match='not served here'):
    client.completions.create(model='gpt-4', prompt='hi', max_tokens=4)
  r = client.completions.create(model='m', prompt=PROMPTS[1], max_tokens=4, temperature=0)
  assert r.choices[0].text == _alone(server, PROMPTS[1], 4)


@pytest.mark.slow
def test_lm_eval_local_completions_scores_as_the_native_backend(server, tmp_path):
  """lm-eval's own `local-completions` model pointed at the server (token-id prompts, echo +
  logprobs for log-likelihoods, greedy generation with stop strings) gives the native `lm`
  backend's scores on the shipped offline tasks. The API backend keeps one position for the
  token it asks for and one for the window's context: its max_length 128 (the model's) is the
  native backend's 126."""
  from lm_eval.models.openai_completions import LocalCompletionsAPI

  from lm import harness
  from test_harness import HARNESS, TASKS, _scores

  url, d = server[1], server[6]
  api = LocalCompletionsAPI(
    base_url=url + '/v1/completions', model='m', tokenizer_backend='huggingface',
    tokenizer=str(d), max_length=128, max_retries=1, timeout=120,
  )  # fmt: skip
  native = harness.HarnessLM(str(d), batch_size=8, max_length=126)
  got, want = (
    _scores(harness.evaluate(str(d), TASKS, HARNESS, limit=3, output=str(tmp_path / f), model=m))
    for f, m in (('api.json', api), ('native.json', native))
  )
  assert {t for t, _ in want} == set(TASKS) and got.keys() == want.keys(), (got, want)
  for key, value in want.items():
    np.testing.assert_allclose(got[key], value, rtol=1e-5, err_msg=str(key))


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests_then_exits(server):
  """Runs last in this file: it stops the server."""
  client, _, proc = server[:3]
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    fut = pool.submit(
      lambda: client.completions.create(model='m', prompt=PROMPTS[1], max_tokens=30, temperature=0)
    )
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    r = fut.result(timeout=120)
  assert r.choices[0].text == _alone(server, PROMPTS[1], 30)
  assert proc.wait(60) == 0


@pytest.mark.slow
def test_t5_is_refused_on_one_line(tiny, tmp_path, run):
  """serve.py serves decoders: an HF T5 directory ends it at once, with one line naming why."""
  tok = tiny[3]
  cfg = t5.T5Config(
    vocab_size=tok.vocab_size, hidden_size=16, d_kv=4, mlp_dim=24, num_heads=2, num_layers=1,
    relative_buckets=8, relative_max_distance=20, dropout_rate=0.0,
  )  # fmt: skip
  ids = jnp.zeros((1, 4), jnp.int32)
  params = nn.unbox(t5.T5(cfg).init(jax.random.PRNGKey(0), ids))['params']
  hf.export_pretrained('t5', cfg, params, tmp_path)
  tok.save(str(tmp_path))
  proc = run('serve.py', f'--checkpoint={tmp_path}', '--port=9', check=False, timeout=300)
  assert proc.returncode != 0 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert 'serves decoders' in proc.stderr.strip().splitlines()[-1], proc.stderr[-3000:]
