"""Python's bundled documentation, partitioned once between pretraining and the downstream sets.

The offline default text (``data.source='python_docs'``) feeds two kinds of job: pretraining
(:func:`lm.data.corpus.python_docs_corpus`) and the offline downstream sets built from the same
install (fine-tuning tasks in lm/tasks/, preference pairs in lm/preference.py, few-shot). An
evaluation set whose text the pretrained model has read measures memory, not skill, so the two
sides draw from disjoint *sources*, decided here and nowhere else:

* every ``pydoc_data.topics`` page (the Language and Library Reference excerpts ``help()``
  shows) is downstream: classification labels its paragraphs, preference pairs read its prose;
* each stdlib module of :data:`STDLIB_MODULES` is downstream when a sha256 hash of its real
  name (``module.__name__``, so an alias such as ``os.path`` lands with ``posixpath``) falls
  below :data:`DOWNSTREAM_FRACTION`; its docstrings then feed QA, token tagging and preference
  pairs, and only the other modules' docstrings are pretraining text;
* pretraining also reads the docstrings in the stdlib's own source files (parsed with ``ast``,
  nothing imported; the test suites left out), each file under its dotted
  module name and left out when that name is reserved as above;
* Python copies some docstrings between modules (gzip / bz2 / lzma, queue / asyncio.queues):
  a pretraining docstring that shares a :data:`NGRAM`-word sequence with a downstream source
  is dropped from pretraining.

The split depends on module names only, so it is the same on every machine and Python version;
tests/test_contamination.py checks the built sets share no paragraph and no 13-word sequence.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import inspect
import os
import re
import sysconfig
import warnings

# Stdlib modules whose import has no side effects (no output, threads or terminal changes);
# modules missing from a Python build (sqlite3, ssl, tomllib...) are skipped.
STDLIB_MODULES = tuple(
  sorted(
    """
    abc argparse array ast asyncio asyncio.base_events asyncio.events asyncio.futures
    asyncio.locks asyncio.protocols asyncio.queues asyncio.runners asyncio.streams
    asyncio.subprocess asyncio.taskgroups asyncio.tasks asyncio.timeouts asyncio.transports
    base64 binascii bdb bisect builtins bz2 cProfile calendar cmath cmd code codecs codeop
    collections collections.abc colorsys compileall concurrent.futures._base
    concurrent.futures.process concurrent.futures.thread configparser contextlib contextvars copy
    copyreg csv ctypes dataclasses datetime dbm decimal difflib dis doctest email email.charset
    email.contentmanager email.feedparser email.generator email.header email.headerregistry
    email.message email.parser email.policy email.utils enum filecmp fileinput fnmatch fractions
    ftplib functools getopt getpass gettext glob graphlib gzip hashlib heapq hmac html
    html.parser http.client http.cookiejar http.cookies http.server imaplib importlib
    importlib.abc importlib.machinery importlib.metadata importlib.resources importlib.util
    inspect io ipaddress itertools json json.decoder json.encoder keyword linecache locale
    logging logging.config logging.handlers lzma mailbox math mimetypes modulefinder
    multiprocessing.connection multiprocessing.context multiprocessing.managers
    multiprocessing.pool multiprocessing.process multiprocessing.queues
    multiprocessing.shared_memory multiprocessing.synchronize netrc numbers opcode operator
    optparse os os.path pathlib pdb pickle pickletools pkgutil platform plistlib poplib pprint
    profile pstats py_compile pyclbr pydoc queue quopri random re reprlib rlcompleter runpy sched
    secrets selectors shelve shlex shutil signal smtplib socket socketserver sqlite3 ssl stat
    statistics string stringprep struct subprocess symtable sys sysconfig tabnanny tarfile
    tempfile textwrap threading time timeit tokenize tomllib trace traceback tracemalloc types
    typing unittest unittest.case unittest.loader unittest.mock unittest.result unittest.runner
    unittest.suite urllib.error urllib.parse urllib.request urllib.robotparser uuid warnings wave
    weakref webbrowser wsgiref.handlers wsgiref.headers wsgiref.simple_server wsgiref.util
    wsgiref.validate xml.dom.minidom xml.dom.pulldom xml.etree.ElementTree xml.sax.handler
    xml.sax.saxutils xml.sax.xmlreader xmlrpc.client xmlrpc.server zipapp zipfile zipimport
    zlib zoneinfo
    """.split()
  )
)
DOWNSTREAM_FRACTION = 0.4  # share of modules (by name hash) kept out of pretraining
MIN_DOCSTRING_CHARS = 200  # a document of the corpus; shorter docstrings are mostly one line
NGRAM = 13  # words; the span GPT-3's contamination analysis (Brown et al. 2020) matched on
_SALT = 'lm.data.python_docs partition v1:'
_WORD = re.compile(r'\w+')


def ngrams(text: str, n: int = NGRAM) -> set:
  """The n-word sequences of `text` (lowercased \\w+ words, punctuation and layout ignored)."""
  words = _WORD.findall(text.lower())
  return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def partition_id() -> str:
  """A short hash of what decides the pretraining text, so prepared shards of another
  partition (an older, contaminated one) are never reused (lm/data/prepare.py spec)."""
  what = (
    f'{_SALT}{DOWNSTREAM_FRACTION} {MIN_DOCSTRING_CHARS} {NGRAM} {" ".join(STDLIB_MODULES)} '
    f'sources: {" ".join(sorted(_SKIP_DIRS))}'
  )
  return hashlib.sha256(what.encode()).hexdigest()[:12]


def is_downstream_module(real_name: str) -> bool:
  """Whether module `real_name` (its ``__name__``) is reserved for the downstream sets."""
  digest = hashlib.sha256((_SALT + real_name).encode()).digest()
  return int.from_bytes(digest[:8], 'big') / 2.0**64 < DOWNSTREAM_FRACTION


@functools.lru_cache(maxsize=None)
def _modules() -> tuple:
  """(listed name, module) of every importable listed module, each real module once."""
  out, seen = [], set()
  for name in STDLIB_MODULES:
    try:
      module = importlib.import_module(name)
    except ImportError:  # e.g. a Python built without sqlite3/ssl: skip, don't fail.
      continue
    if module.__name__ not in seen:
      seen.add(module.__name__)
      out.append((name, module))
  return tuple(out)


def modules(downstream: bool) -> list[tuple]:
  """(listed name, module) of the downstream or the pretraining side, in name order."""
  return [(n, m) for n, m in _modules() if is_downstream_module(m.__name__) == downstream]


def public_callables(module) -> list[tuple]:
  """(name, object) of the module's own public classes and functions, in name order;
  ``vars`` rather than ``dir``: no module ``__getattr__`` side effects."""
  return [
    (attr, obj)
    for attr, obj in sorted(vars(module).items())
    if not attr.startswith('_')
    and (inspect.isclass(obj) or inspect.isfunction(obj))
    and getattr(obj, '__module__', None) == module.__name__
  ]


def _own_methods(cls) -> list:
  """Public functions a class defines itself (not inherited), in name order."""
  out = []
  for attr, obj in sorted(vars(cls).items()):
    if isinstance(obj, (classmethod, staticmethod)):
      obj = obj.__func__
    if not attr.startswith('_') and (inspect.isfunction(obj) or isinstance(obj, property)):
      out.append(obj)
  return out


def module_docstrings(module, min_chars: int = MIN_DOCSTRING_CHARS) -> list[str]:
  """Module docstring, then its public classes (each followed by its own public methods) and
  functions, in name order; ``obj.__doc__`` (not ``inspect.getdoc``) so inherited docstrings
  are not repeated."""
  objects = [module]
  for _, obj in public_callables(module):
    objects.append(obj)
    if inspect.isclass(obj):
      objects.extend(_own_methods(obj))
  with warnings.catch_warnings():  # deprecated aliases (typing.io) warn when read
    warnings.simplefilter('ignore', DeprecationWarning)
    docs = [inspect.cleandoc(o.__doc__) for o in objects if isinstance(o.__doc__, str)]
  return [d for d in docs if len(d) >= min_chars]


def topic_pages() -> dict[str, str]:
  """pydoc topic -> its page (cleaned), sorted by topic: all downstream."""
  from pydoc_data.topics import topics  # pylint: disable=g-import-not-at-top

  return {key: inspect.cleandoc(topics[key]) for key in sorted(topics)}


def _unique(docs):
  seen, out = set(), []
  for d in docs:
    if d not in seen:  # re-exported objects appear once
      seen.add(d)
      out.append(d)
  return out


@functools.lru_cache(maxsize=None)
def _downstream_documents() -> tuple:
  docs = list(topic_pages().values())
  for _, module in modules(downstream=True):
    docs.extend(module_docstrings(module))
  return tuple(_unique(docs))


def downstream_documents() -> list[str]:
  """The downstream sources as documents: topic pages, then the reserved modules' docstrings
  (preference pairs read these; the tasks read the same sources through their own views)."""
  return list(_downstream_documents())


_SKIP_DIRS = frozenset('test tests idle_test site-packages dist-packages __pycache__'.split())


def source_docstrings(min_chars: int = MIN_DOCSTRING_CHARS, downstream: bool = False) -> list[str]:
  """Docstrings of the stdlib's source files whose module is not reserved (or, with
  `downstream`, is): module, classes and functions in file order, files in path order. Parsed,
  never imported (no side effects)."""
  root = sysconfig.get_paths()['stdlib']
  docs = []
  for path, dirs, files in os.walk(root):
    dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith('config-'))
    for name in sorted(f for f in files if f.endswith('.py')):
      rel = os.path.relpath(os.path.join(path, name), root)[:-3].split(os.sep)
      module = '.'.join(rel[:-1] if rel[-1] == '__init__' else rel)
      if is_downstream_module(module) != downstream:
        continue
      try:
        with open(os.path.join(path, name), encoding='utf-8') as f:
          tree = ast.parse(f.read())
      except (SyntaxError, UnicodeDecodeError, ValueError):  # a file for another Python
        continue
      kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
      for node in ast.walk(tree):
        doc = ast.get_docstring(node) if isinstance(node, kinds) else None
        if doc and len(doc) >= min_chars:
          docs.append(doc)
  return docs


@functools.lru_cache(maxsize=None)
def _pretraining_documents() -> tuple:
  reserved = set(_downstream_documents())
  for _, module in modules(downstream=True):  # and the short ones QA/tokens read
    reserved.update(module_docstrings(module, min_chars=1))
  shared = set().union(*map(ngrams, reserved))
  docs = [d for _, m in modules(downstream=False) for d in module_docstrings(m)]
  docs += source_docstrings()
  return tuple(d for d in _unique(docs) if d not in reserved and not ngrams(d) & shared)


def pretraining_documents() -> list[str]:
  """The pretraining side: docstrings of the modules not reserved, none sharing a passage with a
  downstream source; read at run time, never copied."""
  return list(_pretraining_documents())
