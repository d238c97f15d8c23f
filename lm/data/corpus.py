"""Where pretraining text comes from: a corpus is a plain ``list[str]`` of documents.

Three sources, chosen by ``data_cfg.dataset``:

* ``'python_docs'``: English text that ships with every Python install (the pydoc
  topics and stdlib docstrings), so training and tests work offline with no data.
* ``'text_files'``: the user's own local text files (see :func:`read_text_files`).
* anything else: a TFDS dataset name, read from an already prepared ``data_dir``.
"""
from __future__ import annotations

import dataclasses
import glob
import importlib
import inspect
import os
import warnings
from typing import Iterable, Union

# Pure-Python stdlib modules whose import has no side effects; sorted so the
# corpus order (and hence every downstream batch) is reproducible.
STDLIB_MODULES = tuple(sorted((
    "abc", "argparse", "ast", "asyncio", "base64", "bisect", "cProfile", "calendar",
    "codecs", "collections", "configparser", "contextlib", "copy", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "doctest", "email", "enum", "fractions", "functools",
    "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html.parser", "http.client",
    "importlib", "inspect", "io", "itertools", "json", "locale", "logging", "numbers",
    "operator", "os.path", "pathlib", "pdb", "pickle", "pkgutil", "platform", "pprint",
    "pstats", "queue", "random", "re", "runpy", "sched", "secrets", "shutil", "signal",
    "socket", "sqlite3", "ssl", "statistics", "string", "subprocess", "sysconfig",
    "tarfile", "tempfile", "textwrap", "threading", "time", "timeit", "trace",
    "traceback", "typing", "unittest", "urllib.parse", "uuid", "warnings", "weakref",
    "xml.etree.ElementTree", "zipfile", "zipimport",
)))
MIN_DOCSTRING_CHARS = 200
MAX_LINE_CHARS = 1_000_000


def _module_docstrings(name: str) -> list[str]:
    """Module docstring, then its own public classes/functions, in name order."""
    try:
        module = importlib.import_module(name)
    except ImportError:  # e.g. a Python built without sqlite3/ssl: skip, don't fail.
        return []
    objects = [module]
    for attr, obj in sorted(vars(module).items()):  # vars: no module __getattr__ side effects
        if (not attr.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
                and getattr(obj, "__module__", None) == module.__name__):
            objects.append(obj)
    # obj.__doc__ (not inspect.getdoc) so inherited docstrings are not repeated; reading
    # it on deprecated aliases (typing.io) warns, which is noise here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        docs = [inspect.cleandoc(o.__doc__) for o in objects if isinstance(o.__doc__, str)]
    return [d for d in docs if len(d) >= MIN_DOCSTRING_CHARS]


def python_docs_corpus() -> list[str]:
    """pydoc topics (sorted by topic) then stdlib docstrings; read at run time, never copied."""
    from pydoc_data.topics import topics

    docs = [inspect.cleandoc(topics[key]) for key in sorted(topics)]
    seen = set(docs)
    for name in STDLIB_MODULES:
        for doc in _module_docstrings(name):
            if doc not in seen:  # re-exported objects (os.path/posixpath...) appear once
                seen.add(doc)
                docs.append(doc)
    return docs


@dataclasses.dataclass
class TextStats:
    """What reading text files had to repair, so a user can spot a broken input."""
    files: int = 0
    documents: int = 0
    lines: int = 0            # non-empty lines kept (before long-line splitting)
    replaced_chars: int = 0   # U+FFFD inserted for invalid UTF-8 bytes
    empty_lines: int = 0      # empty or whitespace-only lines (document separators)
    long_lines: int = 0       # lines over max_line_chars, split into pieces


def _expand(paths_or_globs: Union[str, Iterable[str]]) -> list[str]:
    """Paths, globs or directories -> sorted file list; anything missing is an error."""
    if isinstance(paths_or_globs, (str, os.PathLike)):
        paths_or_globs = [paths_or_globs]
    files = []
    for pattern in map(str, paths_or_globs):
        if glob.has_magic(pattern):
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        elif os.path.isdir(pattern):
            matches = sorted(p for p in glob.glob(os.path.join(pattern, "**", "*"), recursive=True)
                             if os.path.isfile(p))
        else:
            matches = [pattern] if os.path.isfile(pattern) else []
        if not matches:
            raise FileNotFoundError(
                f"No text file found at {pattern!r}: fix the path/glob in --config.data.files.")
        files.extend(matches)
    return files


def _flush(lines: list[str], docs: list[str]) -> None:
    if lines:
        docs.append("\n".join(lines))
        lines.clear()


def read_text_files(paths_or_globs, max_line_chars: int = MAX_LINE_CHARS):
    """Read local UTF-8 text into documents; returns ``(docs, TextStats)``.

    Format: one or more blank (or whitespace-only) lines end a document, and every
    file ends a document. Lines of a document are joined with ``\\n``. Invalid UTF-8
    is replaced (not fatal) and counted; lines longer than ``max_line_chars`` are cut
    into pieces so one giant line cannot blow up tokenization.
    """
    stats, docs = TextStats(), []
    files = _expand(paths_or_globs)
    for path in files:
        with open(path, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8", errors="replace")
        stats.files += 1
        stats.replaced_chars += text.count("\ufffd") - raw.count("\ufffd".encode())
        current: list[str] = []
        for line in text.splitlines():
            if not line.strip():
                stats.empty_lines += 1
                _flush(current, docs)
                continue
            stats.lines += 1
            if len(line) > max_line_chars:
                stats.long_lines += 1
                current.extend(line[i:i + max_line_chars] for i in range(0, len(line), max_line_chars))
            else:
                current.append(line)
        _flush(current, docs)
    stats.documents = len(docs)
    if not docs:
        raise ValueError(f"Text corpus {files} is empty (no non-blank lines): "
                         "point --config.data.files at files with text.")
    return docs, stats


def _load_tfds(name: str, split: str, data_dir, text_key: str, max_documents: int) -> list[str]:
    import tensorflow_datasets as tfds

    try:
        ds = tfds.load(name, split=split, data_dir=data_dir, download=False)
    except (AssertionError, tfds.core.registered.DatasetNotFoundError) as e:
        first_line = str(e).splitlines()[0]
        raise FileNotFoundError(
            f"TFDS dataset {name!r} (split {split!r}) is not prepared under data_dir={data_dir!r} "
            f"({first_line}): run `tfds build {name} --data_dir=DIR` and pass "
            "--config.data.data_dir=DIR.") from None
    if text_key not in ds.element_spec:
        raise ValueError(f"TFDS dataset {name!r} has no feature {text_key!r} (has "
                         f"{sorted(ds.element_spec)}): set --config.data.text_key.")
    ds = ds.map(lambda ex: ex[text_key])
    if max_documents:
        ds = ds.take(max_documents)
    return [t.decode("utf-8", errors="replace") for t in tfds.as_numpy(ds)]


def load_corpus(data_cfg) -> list[str]:
    """Dispatch on ``data_cfg.dataset``; ``max_documents`` (0 = all) caps every source."""
    get = lambda key, default: getattr(data_cfg, key, default)  # noqa: E731
    dataset = get("dataset", "python_docs") or "python_docs"
    max_documents = int(get("max_documents", 0) or 0)
    if dataset == "python_docs":
        docs = python_docs_corpus()
    elif dataset == "text_files":
        files = [f.strip() for f in (get("files", "") or "").split(",") if f.strip()]
        if not files:
            raise ValueError("data.dataset='text_files' needs files: pass "
                             "--config.data.files=PATH_OR_GLOB[,PATH_OR_GLOB...].")
        docs, stats = read_text_files(files)
        print(f"text_files: {stats.documents} documents from {stats.files} file(s); "
              f"{stats.replaced_chars} invalid UTF-8 sequences replaced, {stats.long_lines} "
              f"over-long lines split, {stats.empty_lines} blank lines dropped.")
    else:
        return _load_tfds(dataset, get("split", "train") or "train", get("data_dir", None),
                          get("text_key", "text") or "text", max_documents)
    return docs[:max_documents] if max_documents else docs
