"""Serve a decoder over an OpenAI-compatible HTTP API, with continuous batching.

  python serve.py --checkpoint=DIR [--host=127.0.0.1 --port=8000 --slots=8 --queue=256 \
      --timeout=600 --max_len=N]

DIR is any workdir or HF directory `generate.py` takes (GPT-2 / Llama family decoders). Endpoints:
/v1/completions, /v1/chat/completions, /v1/models (lm.serving.server). SIGTERM (or Ctrl-C) stops
accepting, lets in-flight requests finish, then exits.
"""

import contextlib
import os
import signal

from absl import flags
from absl import logging

from lm import cli

FLAGS = flags.FLAGS
flags.DEFINE_string('checkpoint', None, 'workdir or HF decoder directory.', required=True)
flags.DEFINE_string('tokenizer', None, 'tokenizer.json or HF vocab files (default: in DIR).')
flags.DEFINE_string('host', '127.0.0.1', 'Address to listen on.')
flags.DEFINE_integer('port', 8000, 'Port to listen on.')
flags.DEFINE_integer('slots', 8, 'Sequences decoded together (the KV cache holds this many).')
flags.DEFINE_integer('queue', 256, 'Requests that may wait for a slot; more get a 429.')
flags.DEFINE_float('timeout', 600.0, 'Seconds a request may take before a 408.')
flags.DEFINE_integer('max_len', None, "Cache slots per sequence (default: the model's max_len).")
flags.DEFINE_string('name', None, 'Model id in the API (default: the directory name).')


def main(argv):
  del argv
  import uvicorn

  from lm import pretrained
  from lm.serving.chat import ChatFormat, find_template
  from lm.serving.engine import Engine
  from lm.serving.server import make_app

  pre, tok, eos = pretrained.for_generation(FLAGS.checkpoint, 'serve.py', FLAGS.tokenizer)
  if pre.kind != 'decoder':
    raise ValueError(
      f'{FLAGS.checkpoint} holds a {pre.kind} model: serve.py serves decoders (GPT-2, Llama '
      'family), not T5; decode it with generate.py (docs/serving.md).'
    )
  engine = Engine(
    pre.model,
    pre.params,
    slots=FLAGS.slots,
    max_len=FLAGS.max_len,
    eos_id=eos,
    pad_id=tok.pad_id or 0,
    queue_size=FLAGS.queue,
  ).start()
  name = FLAGS.name or os.path.basename(os.path.normpath(FLAGS.checkpoint))
  tok_dir = FLAGS.tokenizer and os.path.dirname(os.path.abspath(FLAGS.tokenizer))
  template = find_template(tok_dir, FLAGS.checkpoint)
  chat_format = ChatFormat(tok, template, tok_dir or FLAGS.checkpoint)
  logging.info('chat: %s', 'the chat template' if template else 'the SFT chat format')
  app = make_app(engine, tok, name, FLAGS.timeout, chat_format)
  server = uvicorn.Server(
    uvicorn.Config(
      app,
      host=FLAGS.host,
      port=FLAGS.port,
      log_level='warning',
      timeout_graceful_shutdown=FLAGS.timeout,
    )
  )
  # uvicorn's own handlers re-raise SIGTERM after the drain (the exit status says killed): ours
  # only ask it to stop accepting; in-flight requests finish, the engine drains, exit status 0.
  server.capture_signals = contextlib.nullcontext
  stop = lambda *_: setattr(server, 'should_exit', True)  # noqa: E731
  signal.signal(signal.SIGTERM, stop)
  signal.signal(signal.SIGINT, stop)
  try:
    server.run()
  finally:
    engine.shutdown(timeout=FLAGS.timeout)


if __name__ == '__main__':
  cli.run(main)
