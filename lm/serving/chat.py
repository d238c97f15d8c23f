"""The prompt ids a chat request becomes.

A model directory with a chat template (``chat_template.jinja``, or ``chat_template`` in its
``tokenizer_config.json``) gets it rendered as transformers' ``apply_chat_template(...,
add_generation_prompt=True)`` does: jinja2's immutable sandbox with trim_blocks / lstrip_blocks,
the same ``tojson`` / ``raise_exception`` / ``strftime_now`` helpers, the special tokens' strings,
then encoded without added special tokens. transformers is not needed at run time.

Anything else (our workdirs, HF directories without a template) gets the SFT chat format of
`lm.data.text_to_text` (``[bos]{system}\\n\\nUser: ...\\nAssistant:``), tokenized as SFT's own
generation prompts, so a model fine-tuned by sft.py is served in the format it learned.
"""

import datetime
import json
import os
import types
from typing import Optional

from lm.data import text_to_text as t2t
from lm.data import tokenizer as tokenizer_lib


def find_template(*directories) -> Optional[str]:
  """The first chat template found in `directories` (None entries and files are skipped)."""
  for d in directories:
    if not d or not os.path.isdir(d):
      continue
    path = os.path.join(d, 'chat_template.jinja')  # transformers v5 saves it apart
    if os.path.isfile(path):
      with open(path, encoding='utf-8') as f:
        return f.read()
    path = os.path.join(d, 'tokenizer_config.json')
    if os.path.isfile(path):
      with open(path, encoding='utf-8') as f:
        template = json.load(f).get('chat_template')
      if isinstance(template, list):  # named templates: the default one serves chat
        template = {t['name']: t['template'] for t in template}.get('default')
      if template:
        return template
  return None


def _compile(template: str):
  import jinja2  # pylint: disable=import-outside-toplevel
  from jinja2 import ext, sandbox  # pylint: disable=import-outside-toplevel

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(
      x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )

  env = sandbox.ImmutableSandboxedEnvironment(
    trim_blocks=True, lstrip_blocks=True, extensions=[ext.loopcontrols]
  )
  env.filters['tojson'] = tojson
  env.globals['raise_exception'] = raise_exception
  env.globals['strftime_now'] = lambda fmt: datetime.datetime.now().strftime(fmt)
  return env.from_string(template)


class ChatFormat:
  """`format(messages) -> prompt ids`; `messages` are {'role', 'content'} dicts. Raises
  ValueError for a chat the format refuses (a server's 400)."""

  def __init__(self, tokenizer, template: Optional[str] = None, directory: Optional[str] = None):
    self.tokenizer, self.template = tokenizer, template
    self._compiled = _compile(template) if template else None
    self.special = {k: v for k, v in tokenizer_lib._special_tokens(directory or '').items() if v}

  @property
  def kind(self) -> str:
    return 'template' if self.template else 'sft'

  def __call__(self, messages: list) -> list:
    if self._compiled is not None:
      import jinja2  # pylint: disable=import-outside-toplevel

      try:
        text = self._compiled.render(messages=messages, add_generation_prompt=True, **self.special)
      except jinja2.exceptions.TemplateError as e:
        raise ValueError(f'the chat template refuses these messages: {e}') from None
      return self.tokenizer.encode(text)
    # SFT's generation prompt: the chat up to an (empty) assistant turn, which encode drops
    chat = list(messages) + [{'role': 'assistant', 'content': ''}]
    t2t.check_messages(chat, 'messages')
    cfg = types.SimpleNamespace(template='chat', system=None)
    pieces = t2t.render({'messages': chat}, cfg)
    return t2t.encode(pieces, self.tokenizer, 0, 1 << 30, generation=True)[0]
