"""OpenAI-compatible HTTP API over an `Engine`: /v1/completions, /v1/chat/completions (the
model's chat template or the SFT chat format, `lm.serving.chat`; both with streaming, n, logprobs,
stop, seed; completions also echo, scoring the prompt), /v1/models.

Errors use OpenAI's shape ({"error": {"message", "type", "param", "code"}}): 400 for bad JSON,
unknown fields, wrong types and prompts the model cannot hold, 404 for another model's name, 429
when the engine's queue is full, 408 when a request outlives `timeout`. The engine runs on its own
thread; handlers wait on asyncio queues it feeds, so a slow client never holds a decode slot's
thread.
"""

import asyncio
import json
import time
import uuid
from typing import Optional, Union

import fastapi
import pydantic
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from lm.serving.chat import ChatFormat
from lm.serving.engine import Engine, QueueFull, Sampling


class _Body(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra='forbid')  # unknown fields are a 400, not ignored

  model: Optional[str] = None
  max_tokens: Optional[int] = pydantic.Field(None, ge=0)  # 0: only with echo (prompt scoring)
  temperature: float = pydantic.Field(1.0, ge=0.0, le=2.0)
  top_p: float = pydantic.Field(1.0, gt=0.0, le=1.0)
  top_k: int = pydantic.Field(0, ge=0)  # an extension (vLLM's)
  n: int = pydantic.Field(1, ge=1, le=16)
  stream: bool = False
  stream_options: Optional[dict] = None
  stop: Optional[Union[str, list[str]]] = None
  seed: Optional[int] = None
  user: Optional[str] = None


class CompletionBody(_Body):
  prompt: Union[str, list[str], list[int], list[list[int]]]
  logprobs: Optional[int] = pydantic.Field(None, ge=0, le=5)
  echo: bool = False


class Message(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra='forbid')
  role: str
  content: str
  name: Optional[str] = None


class ChatBody(_Body):
  messages: list[Message] = pydantic.Field(min_length=1)
  max_completion_tokens: Optional[int] = pydantic.Field(None, ge=1)
  logprobs: bool = False
  top_logprobs: Optional[int] = pydantic.Field(None, ge=0, le=5)


def _error(
  status: int, message: str, param: Optional[str] = None, kind='invalid_request_error', code=None
):
  body = {'error': {'message': message, 'type': kind, 'param': param, 'code': code}}
  return JSONResponse(body, status_code=status)


def _held_back(text: str, stops: list) -> int:
  """How many trailing characters may still become a stop sequence (or finish a multi-byte
  character): a stream keeps them until the next token decides."""
  if text.endswith('\ufffd'):
    return 1
  return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


class _Stream:
  """One choice: the engine request, its text so far, and the stop strings to cut at."""

  def __init__(self, app, prompt, sampling, stops, loop):
    self.app, self.stops, self.sent, self.events = app, stops, 0, asyncio.Queue()
    tok = app.state.tokenizer
    stop = None
    if stops:
      stop = lambda ids: any(s in tok.decode(ids) for s in stops)  # noqa: E731
    sampling = Sampling(**{**sampling, 'stop': stop})
    put = lambda ev: loop.call_soon_threadsafe(self.events.put_nowait, ev)  # noqa: E731
    self.req = app.state.engine.submit(prompt, sampling, listener=put)

  def text(self) -> str:
    """The decoded continuation, cut before a stop sequence (which the client never sees)."""
    text = self.app.state.tokenizer.decode(self.req.ids)
    cut = min((text.find(s) for s in self.stops if s in text), default=-1)
    return text if cut < 0 else text[:cut]

  def delta(self, final: bool) -> str:
    text = self.text()
    end = len(text) if final else len(text) - _held_back(text, self.stops)
    out, self.sent = text[self.sent : end], max(self.sent, end)
    return out

  @property
  def finish_reason(self):
    return {'cancelled': 'length'}.get(self.req.finish_reason, self.req.finish_reason)


def make_app(
  engine: Engine, tokenizer, name: str, timeout: float = 600.0, chat_format=None
) -> fastapi.FastAPI:
  """The API over a started engine (the caller shuts it down: `serve.py` does after uvicorn's
  graceful shutdown has let in-flight requests finish). `chat_format`: a `ChatFormat` (default:
  the SFT chat format)."""
  chat_format = chat_format or ChatFormat(tokenizer)
  app = fastapi.FastAPI(title='lm')
  app.state.engine, app.state.tokenizer, app.state.name = engine, tokenizer, name

  @app.exception_handler(RequestValidationError)
  async def invalid(request, exc):
    errs = exc.errors()
    first = errs[0] if errs else {}
    where = '.'.join(str(x) for x in first.get('loc', ())[1:]) or None
    return _error(400, f'{first.get("msg", "invalid request")} ({where or "body"})', where)

  @app.get('/v1/models')
  async def models():
    card = {'id': name, 'object': 'model', 'created': 0, 'owned_by': 'lm'}
    return {'object': 'list', 'data': [card]}

  @app.get('/health')
  async def health():
    return {'status': 'ok'}

  def encode(text_or_ids):
    if isinstance(text_or_ids, str):
      ids = tokenizer.encode(text_or_ids)
      if tokenizer.bos_id is not None and tokenizer.bos_id != tokenizer.eos_id:
        ids = [tokenizer.bos_id] + ids  # Llama-style text starts with BOS (as generate.py)
      return ids or [tokenizer.eos_id if tokenizer.eos_id is not None else 0]
    return list(text_or_ids)

  def settings(body):
    return dict(temperature=body.temperature, top_p=body.top_p, top_k=body.top_k)

  async def run(body, prompts, chat: bool):
    """Submits every (prompt, choice) pair; returns a JSON or SSE response."""
    if body.model is not None and body.model != name:
      msg = f'the model {body.model!r} is not served here; this server serves {name!r}.'
      return _error(404, msg, 'model', code='model_not_found')
    max_tokens = getattr(body, 'max_completion_tokens', None) or body.max_tokens
    max_tokens = 16 if max_tokens is None else max_tokens
    echo = not chat and body.echo
    if max_tokens == 0 and (not echo or body.stream):
      return _error(
        400, 'max_tokens 0 needs echo (and no stream): it scores the prompt.', 'max_tokens'
      )
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    loop = asyncio.get_running_loop()
    scored = [None] * len(prompts)
    if echo and body.logprobs is not None:  # the prompt's own log-probs, one forward pass each
      try:
        scored = [await loop.run_in_executor(None, engine.score, p) for p in prompts]
      except ValueError as e:
        return _error(400, str(e), 'prompt')
    streams = []
    try:
      for p, sc in zip(prompts, scored):
        if max_tokens == 0:
          streams += [(p, sc, None)] * body.n
          continue
        for j in range(body.n):
          seed = None if body.seed is None else body.seed + j
          s = dict(settings(body), max_tokens=max_tokens, seed=seed)
          streams.append((p, sc, _Stream(app, p, s, stops, loop)))
    except (ValueError, QueueFull) as e:
      for *_, st in streams:
        if st is not None:
          st.req.cancel()
      if isinstance(e, QueueFull):
        return _error(429, str(e), kind='server_busy')
      return _error(400, str(e), 'prompt' if not chat else 'messages')
    rid = ('chatcmpl-' if chat else 'cmpl-') + uuid.uuid4().hex
    created = int(time.time())
    head = dict(id=rid, created=created, model=name)
    if body.stream:
      return StreamingResponse(
        _sse(streams, head, chat, body, timeout), media_type='text/event-stream'
      )
    deadline = loop.time() + timeout
    running = [st for *_, st in streams if st is not None]
    try:
      for st in running:
        while (await asyncio.wait_for(st.events.get(), deadline - loop.time())) is not None:
          pass
    except asyncio.TimeoutError:
      for st in running:
        st.req.cancel()
      return _error(408, f'the request took longer than {timeout} s.', kind='timeout')
    choices = [_choice(i, *x, chat, body, tokenizer) for i, x in enumerate(streams)]
    used = sum(len(st.req.ids) for st in running)
    prompt_tokens = sum(len(p) for p in prompts)
    usage = dict(
      prompt_tokens=prompt_tokens, completion_tokens=used, total_tokens=prompt_tokens + used
    )
    obj = 'chat.completion' if chat else 'text_completion'
    return dict(head, object=obj, choices=choices, usage=usage)

  async def _sse(streams, head, chat, body, timeout):
    obj = 'chat.completion.chunk' if chat else 'text_completion'
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    chunk = lambda i, **c: (
      'data: ' + json.dumps(dict(head, object=obj, choices=[dict(index=i, **c)])) + '\n\n'
    )  # noqa: E731
    try:
      if chat:
        for i in range(len(streams)):
          yield chunk(i, delta={'role': 'assistant', 'content': ''}, finish_reason=None)
      for i, (p, _, st) in enumerate(streams):  # choices in turn (each was decoding all along)
        if not chat and body.echo:
          yield chunk(i, text=tokenizer.decode(p), logprobs=None, finish_reason=None)
        while True:
          ev = await asyncio.wait_for(st.events.get(), deadline - loop.time())
          final = ev is None
          text = st.delta(final)
          reason = st.finish_reason if final else None
          if text or final:
            if chat:
              yield chunk(i, delta={'content': text} if text else {}, finish_reason=reason)
            else:
              yield chunk(i, text=text, logprobs=None, finish_reason=reason)
          if final:
            break
      yield 'data: [DONE]\n\n'
    except asyncio.TimeoutError:
      yield 'data: ' + json.dumps({'error': {'message': 'timeout', 'type': 'timeout'}}) + '\n\n'
    finally:  # a client gone or timed out frees its slots
      for *_, st in streams:
        st.req.cancel()

  @app.post('/v1/completions')
  async def completions(body: CompletionBody):
    p = body.prompt
    if isinstance(p, str) or (p and isinstance(p[0], int)):
      p = [p]
    if not p:
      return _error(400, 'the prompt is empty.', 'prompt')
    return await run(body, [encode(x) for x in p], chat=False)

  @app.post('/v1/chat/completions')
  async def chat(body: ChatBody):
    msgs = [m.model_dump(exclude_none=True) for m in body.messages]
    try:
      ids = chat_format(msgs)
    except ValueError as e:
      return _error(400, str(e), 'messages')
    return await run(body, [ids], chat=True)

  return app


def _choice(i, prompt, scored, st: Optional[_Stream], chat: bool, body, tok):
  """One choice's JSON. `scored`: the prompt's own tokens (`Engine.score`) when echo asks for
  log-probs; `st` None: max_tokens 0, the echoed prompt alone."""
  text = st.text() if st is not None else ''
  reason = st.finish_reason if st is not None else 'length'
  if chat:
    out = dict(index=i, message={'role': 'assistant', 'content': text}, finish_reason=reason)
    if body.logprobs:
      k = body.top_logprobs or 0
      out['logprobs'] = {'content': [_chat_lp(t, k, tok) for t in _kept(st)]}
    else:
      out['logprobs'] = None
    return out
  out = dict(index=i, text=(tok.decode(prompt) if body.echo else '') + text, finish_reason=reason)
  out['logprobs'] = None
  if body.logprobs is not None:
    kept = _kept(st) if st is not None else []
    tokens = [tok.decode([t.id]) for t in kept]
    token_lps = [t.logprob for t in kept]
    top = [_top(t, body.logprobs, tok) for t in kept]
    if scored is not None:  # echo: the prompt's tokens first, the first one unscored (None)
      tokens = [tok.decode([j]) for j in prompt] + tokens
      token_lps = [None] + [t.logprob for t in scored] + token_lps
      top = [None] + [_top(t, body.logprobs, tok) for t in scored] + top
    offsets, at = [], 0
    for s in tokens:
      offsets.append(at)
      at += len(s)
    out['logprobs'] = dict(
      tokens=tokens, token_logprobs=token_lps, top_logprobs=top, text_offset=offsets
    )
  return out


def _top(t, k: int, tok) -> dict:
  """{text: log-prob} of a token's k best alternatives; where two ids decode alike (byte
  pieces), the better one's (lm-eval's is-greedy test compares the token to max(values))."""
  out = {}
  for j, lp in t.top[:k]:
    out.setdefault(tok.decode([j]), lp)
  return out


def _kept(st: _Stream):
  """The tokens whose text the client gets (a stop sequence's tokens are cut with it)."""
  text, kept = st.text(), []
  for t in st.req.tokens:
    if len(st.app.state.tokenizer.decode([x.id for x in kept + [t]])) > len(text) and kept:
      break
    kept.append(t)
  return kept


def _chat_lp(t, k, tok):
  entry = lambda i, lp: {
    'token': tok.decode([i]),
    'logprob': lp,
    'bytes': list(tok.decode([i]).encode()),
  }  # noqa: E731
  return dict(entry(t.id, t.logprob), top_logprobs=[entry(i, lp) for i, lp in t.top[:k]])
