r"""Prepare a pretraining corpus once: stream documents, tokenize in parallel, write shards.

  python -m lm.data.prepare --config=configs/gpt_base.py --config.data.source=files \
      --config.data.files='corpus/*.txt' [--config.data.prepared_dir=/shared/prep]

``train.py`` calls :func:`ensure` on start, so this command is only needed to prepare ahead
of a (multi-host) run. What it does, with memory bounded by the shard and chunk sizes
whatever the corpus size:

1. Tokenizer: the configured HF files, or trained once from a deterministic sample of at
   most ``data.tokenizer.sample_mb`` of text (held-out documents excluded), saved as
   ``tokenizer.json`` in the prepared directory.
2. Documents stream from the source (:func:`lm.data.corpus.iter_documents`) in chunks to
   ``data.prepare_workers`` processes that tokenize them; the main process writes token
   shards in stream order, so the output does not depend on the number of workers.
3. Each document goes to ``train`` or ``eval`` by a hash of its text
   (:func:`lm.data.split_lib.doc_held_out`, ``data.eval_fraction``): whole documents, and a
   repeated document is always on the same side.
4. A shard is committed by its ``shards/NNNNN.json`` record, written after its files; the
   manifest is written last. An interrupted run resumes after the last committed shard;
   half-written files are never read.

The prepared directory defaults to ``$LM_DATA_CACHE`` (or ``~/.cache/lm/prepared``) / a name
derived from the data config, so a new workdir with the same data reuses it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import fcntl
import hashlib
import itertools
import json
import multiprocessing
import os
import re
import sys
import threading
import time
from typing import Optional

import numpy as np
from etils import epath

from lm import progress as progress_lib
from lm.data import corpus as corpus_lib
from lm.data.corpus import field
from lm.data import python_docs
from lm.data import shards as shards_lib
from lm.data import sources
from lm.data import text_files
from lm.data import split as split_lib
from lm.data import tokenizer as tokenizer_lib

CHUNK_CHARS = 1 << 20  # text sent to a worker at a time
SMALL_SOURCE = 32 << 20  # below this many bytes, tokenize in-process (no worker start-up)
PROGRESS = 'prepare.json'  # spec of a preparation in progress, so a resume never mixes corpora


def spec(data_cfg) -> dict:
  """Everything that decides the prepared bytes; two configs with equal specs share data."""
  sources.check(data_cfg)
  kind = field(data_cfg, 'source', 'python_docs')
  source = {'source': kind, 'max_documents': int(field(data_cfg, 'max_documents', 0))}
  if kind == 'python_docs':  # a new pretraining/downstream partition is another corpus
    source['partition'] = python_docs.partition_id()
  elif kind == 'files':
    source['files'] = field(data_cfg, 'files', '')
  elif kind == 'tfds':
    source.update(
      tfds_name=corpus_lib.tfds_name(data_cfg),
      split=field(data_cfg, 'split', 'train'),
      text_key=field(data_cfg, 'text_key', 'text'),
      data_dir=str(field(data_cfg, 'data_dir', '')),
    )
  tok_cfg = data_cfg.tokenizer
  path = field(tok_cfg, 'path', '')
  if path:
    tok = {'sha256': _sha(tokenizer_lib.from_hf_files(path).hf.to_str())}
  else:
    tok = {
      'kind': tok_cfg.kind,
      'vocab_size': int(tok_cfg.vocab_size),
      'sample_mb': float(field(tok_cfg, 'sample_mb', 0)),
    }
  return {
    'format': shards_lib.FORMAT,
    'source': source,
    'tokenizer': tok,
    'eval_fraction': float(data_cfg.eval_fraction),
  }


def _sha(text: str) -> str:
  return hashlib.sha256(text.encode()).hexdigest()


def resolve_dir(data_cfg) -> str:
  """``data.prepared_dir``, or a cache directory named by the data spec."""
  explicit = field(data_cfg, 'prepared_dir', '')
  if explicit:
    return str(explicit)
  root = os.environ.get('LM_DATA_CACHE') or os.path.join(
    os.path.expanduser('~'), '.cache', 'lm', 'prepared'
  )
  source = field(data_cfg, 'source', 'python_docs')
  name = corpus_lib.tfds_name(data_cfg) if source == 'tfds' else source
  slug = re.sub(r'[^A-Za-z0-9_.-]+', '_', name)
  key = _sha(json.dumps(spec(data_cfg), sort_keys=True))[:12]
  return os.path.join(root, f'{slug}-{key}')


def _differences(a: dict, b: dict, prefix: str = '') -> list[str]:
  out = []
  for k in sorted(set(a) | set(b)):
    x, y = a.get(k), b.get(k)
    if isinstance(x, dict) and isinstance(y, dict):
      out += _differences(x, y, f'{prefix}{k}.')
    elif x != y:
      out.append(f'{prefix}{k}: {x!r} there, {y!r} here')
  return out


def check_manifest(directory: str, manifest: dict, want: dict, listing: Optional[dict]) -> None:
  """The prepared data matches this config (and, where given, the source as it is now)."""
  if manifest.get('spec') != want:
    diff = '; '.join(_differences(manifest.get('spec', {}), want)[:3])
    raise ValueError(
      f'prepared data in {directory} was made from another corpus or tokenizer '
      f'({diff}): point --config.data.prepared_dir at another directory, or '
      'delete that one to prepare again.'
    )
  if listing is not None and manifest.get('listing') != listing:
    raise ValueError(
      f'the source files changed since {directory} was prepared '
      f'({manifest.get("listing")} then, {listing} now): prepare into another '
      '--config.data.prepared_dir, or delete that one.'
    )
  tok = epath.Path(directory) / shards_lib.TOKENIZER
  if not tok.exists() or _sha(tok.read_text()) != manifest['tokenizer']['sha256']:
    raise ValueError(
      f'{tok} is missing or is not the tokenizer the shards were made with: '
      f'delete {directory} and prepare again.'
    )


def load(directory: str, want: Optional[dict] = None, listing: Optional[dict] = None):
  """(manifest, tokenizer) of a complete prepared directory, checked against ``want``."""
  manifest = shards_lib.read_json(epath.Path(directory) / shards_lib.MANIFEST)
  if manifest is None:
    raise FileNotFoundError(
      f'no prepared data in {directory} (no {shards_lib.MANIFEST}): run '
      'python -m lm.data.prepare --config=... first.'
    )
  if want is not None:
    check_manifest(directory, manifest, want, listing)
  tok_path = epath.Path(directory) / shards_lib.TOKENIZER
  return manifest, tokenizer_lib.Tokenizer(tokenizer_lib.HFTokenizer.from_str(tok_path.read_text()))


@contextlib.contextmanager
def _lock(directory: str):
  """One preparer per local directory (a second waits, then finds the manifest)."""
  if shards_lib.is_remote(directory):
    yield
    return
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, '.lock'), 'w') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def ensure(data_cfg, process_index: int = 0, timeout: Optional[float] = None):
  """Prepared (directory, manifest, tokenizer) for ``data_cfg``: process 0 prepares it if
  needed; other processes wait for its manifest and never read the source."""
  directory, want = resolve_dir(data_cfg), spec(data_cfg)
  if process_index == 0:
    listing = corpus_lib.source_listing(data_cfg)
    with _lock(directory):
      if not (epath.Path(directory) / shards_lib.MANIFEST).exists():
        prepare(data_cfg, directory, listing=listing)
    return (directory, *load(directory, want, listing))
  timeout = float(timeout or os.environ.get('LM_PREPARE_TIMEOUT', 24 * 3600))
  deadline, manifest = time.time() + timeout, epath.Path(directory) / shards_lib.MANIFEST
  while not manifest.exists():
    if time.time() > deadline:
      raise TimeoutError(
        f'process {process_index} waited {timeout:.0f} s for process 0 to '
        f"prepare {directory}: check process 0's log, or prepare ahead "
        'with python -m lm.data.prepare.'
      )
    time.sleep(2)
  return (directory, *load(directory, want))


# ---------------------------------------------------------------- tokenizer


def _sample(data_cfg, sample_bytes: int, eval_fraction: float, total: int):
  """Deterministic sample of at most ``sample_bytes`` of training text, spread over the
  corpus by a second hash of each document when the source's size (``total``) is known."""
  keep = min(1.0, sample_bytes / total) if total else 1.0
  docs, size = [], 0
  with progress_lib.bar('tokenizer sample', sample_bytes, bytes_=True) as bar:
    for doc in corpus_lib.iter_documents(data_cfg):
      digest = split_lib.doc_hash(doc)
      if split_lib.doc_held_out(digest, eval_fraction) or not split_lib.doc_held_out(
        digest[8:], keep
      ):
        continue
      docs.append(doc)
      size += len(doc)
      bar.update(len(doc))
      if size >= sample_bytes:
        break
  return docs, keep


def _tokenizer(data_cfg, directory: epath.Path, listing: dict, progress: dict):
  """The prepared directory's tokenizer: configured files > an interrupted run's > trained.
  What training used is kept in ``progress`` so a resumed run's manifest still says it."""
  tok_cfg, path = data_cfg.tokenizer, directory / shards_lib.TOKENIZER
  if field(tok_cfg, 'path', ''):
    tok, info = tokenizer_lib.from_hf_files(tok_cfg.path), {'from': str(tok_cfg.path)}
  elif path.exists():
    tok = tokenizer_lib.Tokenizer(tokenizer_lib.HFTokenizer.from_str(path.read_text()))
    info = dict(progress.get('tokenizer', {}))
  else:
    t0 = time.time()
    sample_bytes = int(float(field(tok_cfg, 'sample_mb', 64)) * (1 << 20))
    docs, keep = _sample(
      data_cfg, sample_bytes, float(data_cfg.eval_fraction), listing.get('bytes') or 0
    )
    if not docs:
      raise ValueError(
        'no training documents to train the tokenizer on in '
        f'data.source={field(data_cfg, "source", "python_docs")!r}: check the '
        'data config (files, eval_fraction).'
      )
    tok = tokenizer_lib.train_tokenizer(docs, tok_cfg.kind, int(tok_cfg.vocab_size))
    info = {
      'trained_on_docs': len(docs),
      'trained_on_chars': sum(map(len, docs)),
      'sample_fraction': keep,
      'seconds': round(time.time() - t0, 2),
    }
    print(
      f'prepare: trained a {tok_cfg.kind} tokenizer ({tok.vocab_size} ids) on {len(docs)} '
      f'documents ({info["trained_on_chars"] / 1e6:.1f} M chars) in {info["seconds"]} s'
    )
  text = tok.hf.to_str()
  if not path.exists() or path.read_text() != text:
    tmp = directory / f'{shards_lib.TOKENIZER}.tmp'
    tmp.write_text(text)
    tmp.replace(path)
  info.update(sha256=_sha(text), kind=tok.kind, vocab_size=tok.vocab_size)
  progress['tokenizer'] = info
  shards_lib.write_json(directory / PROGRESS, progress)
  return tok, info


# ---------------------------------------------------------------- tokenizing


_worker_tok = None


def _exit_with_parent(parent: int):
  """A worker whose parent was killed (kill -9, OOM) would block forever on its result pipe."""
  while os.getppid() == parent:
    time.sleep(1)
  os._exit(1)


def _init_worker(tokenizer_json: str, threads: bool, parent: Optional[int] = None):
  global _worker_tok
  if parent is not None:
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
  if not threads:  # one process per core: no nested thread pools
    os.environ['TOKENIZERS_PARALLELISM'] = 'false'
  _worker_tok = tokenizer_lib.HFTokenizer.from_str(tokenizer_json)


@contextlib.contextmanager
def _bare_main():
  """Spawned workers re-import the parent's ``__main__`` (train.py: JAX, TF, ~1 GB each);
  hide it while the pool starts so a worker imports only this module."""
  main = sys.modules['__main__']
  saved = {k: getattr(main, k) for k in ('__file__', '__spec__') if hasattr(main, k)}
  main.__spec__ = None
  if hasattr(main, '__file__'):
    del main.__file__
  try:
    yield
  finally:
    for k, v in saved.items():
      setattr(main, k, v)


def _tokenize_chunk(args):
  """docs -> per split (flat ids, lengths), plus the chunk's digest and size."""
  docs, eval_fraction, dtype = args
  encode = getattr(_worker_tok, 'encode_batch_fast', _worker_tok.encode_batch)
  all_ids = [e.ids for e in encode(docs, add_special_tokens=False)]
  digests = [split_lib.doc_hash(d) for d in docs]
  held = [split_lib.doc_held_out(g, eval_fraction) for g in digests]
  out = {}
  for split in shards_lib.SPLITS:
    want = split == 'eval'
    ids = [x for x, h in zip(all_ids, held) if h == want and x]
    lens = np.fromiter(map(len, ids), np.int64, len(ids))
    out[split] = (np.fromiter(itertools.chain.from_iterable(ids), dtype, int(lens.sum())), lens)
  return out, hashlib.sha256(b''.join(digests)).digest(), len(docs), sum(map(len, docs))


def _chunks(docs, limit: int):
  chunk, size = [], 0
  for doc in docs:
    chunk.append(doc)
    size += len(doc)
    if size >= limit:
      yield chunk
      chunk, size = [], 0
  if chunk:
    yield chunk


class _ShardWriter:
  """Appends tokenized chunks to the current shard's temporary files; commits a shard by
  renaming its files and then writing its record."""

  def __init__(self, directory: epath.Path, index: int, dtype: np.dtype):
    self.dir, self.index, self.dtype = directory / 'shards', index, dtype
    self.dir.mkdir(parents=True, exist_ok=True)
    self._open()

  def _open(self):
    name = shards_lib.shard_name(self.index)
    self.files = {s: (self.dir / f'{name}.{s}.bin.tmp').open('wb') for s in shards_lib.SPLITS}
    self.lens = {s: [] for s in shards_lib.SPLITS}
    self.sha, self.docs_read, self.chars = hashlib.sha256(), 0, 0

  def add(self, result):
    parts, digest, n_docs, n_chars = result
    for split, (flat, lens) in parts.items():
      self.files[split].write(flat.tobytes())
      self.lens[split].append(lens)
    self.sha.update(digest)
    self.docs_read += n_docs
    self.chars += n_chars

  def commit(self) -> dict:
    name = shards_lib.shard_name(self.index)
    entry = {
      'name': name,
      'docs_read': self.docs_read,
      'chars': self.chars,
      'sha256': self.sha.hexdigest(),
    }
    for split in shards_lib.SPLITS:
      self.files[split].close()
      lens = np.concatenate(self.lens[split]) if self.lens[split] else np.zeros(0, np.int64)
      starts = np.zeros(len(lens) + 1, '<i8')
      np.cumsum(lens, out=starts[1:])
      (self.dir / f'{name}.{split}.idx.tmp').write_bytes(starts.tobytes())
      for ext in ('bin', 'idx'):
        (self.dir / f'{name}.{split}.{ext}.tmp').replace(self.dir / f'{name}.{split}.{ext}')
      entry[split] = {'docs': len(lens), 'tokens': int(starts[-1])}
    shards_lib.write_json(self.dir / f'{name}.json', entry)
    self.index += 1
    self._open()
    return entry

  def close(self):
    """Drops the files of the shard that was opened but never committed."""
    for split, f in self.files.items():
      f.close()
      (self.dir / f'{shards_lib.shard_name(self.index)}.{split}.bin.tmp').unlink(missing_ok=True)


def _committed(directory: epath.Path, dtype: np.dtype) -> list[dict]:
  """Shard records of an interrupted run, in order, up to the first missing or damaged one;
  that shard's and all later files are removed (they are redone)."""
  entries, shards = [], directory / 'shards'
  while True:
    entry = shards_lib.read_json(shards / f'{shards_lib.shard_name(len(entries))}.json')
    if entry is None:
      break
    try:
      shards_lib.check_files(directory, entry, dtype)
    except (FileNotFoundError, ValueError):
      break
    entries.append(entry)
  if shards.exists():
    for path in shards.iterdir():
      if not path.name[:5].isdigit() or int(path.name[:5]) >= len(entries):
        path.unlink()
  return entries


def _workers(data_cfg, listing: dict) -> int:
  """``data.prepare_workers``; -1: one per core, or in-process for a small local source."""
  requested = int(field(data_cfg, 'prepare_workers', -1))
  if requested >= 0:
    return requested
  if field(data_cfg, 'source', 'python_docs') == 'python_docs':
    return 0
  size = listing.get('bytes')
  return 0 if size is not None and size < SMALL_SOURCE else (os.cpu_count() or 1)


def prepare(
  data_cfg, directory: str, workers: Optional[int] = None, listing: Optional[dict] = None
) -> dict:
  """Writes (or finishes) the prepared data for ``data_cfg`` in ``directory``; returns the
  manifest. ``listing``: :func:`lm.data.corpus.source_listing`, when the caller has it."""
  t0, out = time.time(), epath.Path(directory)
  out.mkdir(parents=True, exist_ok=True)
  want = spec(data_cfg)
  listing = corpus_lib.source_listing(data_cfg) if listing is None else listing
  progress = shards_lib.read_json(out / PROGRESS)
  if progress is None and any(p.name not in ('.lock',) for p in out.iterdir()):
    raise ValueError(
      f'{directory} is not empty and holds no prepared data: pass an empty or '
      'new --config.data.prepared_dir (nothing was written).'
    )
  if progress is not None and (progress['spec'], progress['listing']) != (want, listing):
    diff = '; '.join(_differences(progress['spec'], want)[:3]) or 'the source files changed'
    raise ValueError(
      f'{directory} holds an unfinished preparation of another corpus ({diff}): '
      'delete it or use another --config.data.prepared_dir.'
    )
  progress = progress or {'spec': want, 'listing': listing}
  shards_lib.write_json(out / PROGRESS, progress)

  tok, tok_info = _tokenizer(data_cfg, out, listing, progress)
  dtype = shards_lib.token_dtype(tok.vocab_size)
  entries = _committed(out, dtype)
  eval_fraction = float(data_cfg.eval_fraction)
  shard_chars = int(float(field(data_cfg, 'shard_mb', 64)) * (1 << 20))
  stats = text_files.TextStats()
  docs = corpus_lib.iter_documents(data_cfg, stats)
  skip = sum(e['docs_read'] for e in entries)
  if skip:
    print(f'prepare: resuming after {len(entries)} committed shard(s) ({skip} documents)')
    for _ in range(skip):
      next(docs)
  tasks = ((chunk, eval_fraction, dtype) for chunk in _chunks(docs, min(CHUNK_CHARS, shard_chars)))
  workers = _workers(data_cfg, listing) if workers is None else workers
  writer = _ShardWriter(out, len(entries), dtype)
  tok_json = tok.hf.to_str()
  # Characters read against the source's bytes (files: their size; other sources: unknown).
  bar = progress_lib.bar(
    'prepare', listing.get('bytes'), bytes_=True, initial=sum(e['chars'] for e in entries)
  )

  def add(result):  # shards end at the same chunk whatever the number of workers
    writer.add(result)
    bar.update(result[3])
    bar.set_postfix_str(f'{writer.docs_read + sum(e["docs_read"] for e in entries):,} docs')
    if writer.chars >= shard_chars:
      entries.append(writer.commit())

  with contextlib.ExitStack() as stack:
    stack.enter_context(bar)
    if workers:
      with _bare_main():
        pool = stack.enter_context(
          concurrent.futures.ProcessPoolExecutor(
            workers,
            multiprocessing.get_context('spawn'),
            _init_worker,
            (tok_json, False, os.getpid()),
          )
        )
    else:
      _init_worker(tok_json, True)
    pending = collections.deque()
    for task in tasks:
      if not workers:
        add(_tokenize_chunk(task))
        continue
      pending.append(pool.submit(_tokenize_chunk, task))
      while len(pending) > 2 * workers or (pending and pending[0].done()):
        add(pending.popleft().result())  # at most 2 chunks per worker in flight
    while pending:
      add(pending.popleft().result())
    if writer.docs_read:
      entries.append(writer.commit())
    writer.close()
    bar.update(max(0, (listing.get('bytes') or 0) - bar.n))  # all read: separators, markup too
  return _finish(out, want, listing, tok_info, dtype, entries, eval_fraction, stats, t0, workers)


def _finish(
  out, want, listing, tok_info, dtype, entries, eval_fraction, stats, t0, workers
) -> dict:
  totals = {
    s: {k: sum(e[s][k] for e in entries) for k in ('docs', 'tokens')} for s in shards_lib.SPLITS
  }
  if not totals['train']['docs']:
    raise ValueError(
      f'the corpus gave no training documents ({sum(e["docs_read"] for e in entries)}'
      ' read): check the data config (files, max_documents, eval_fraction).'
    )
  corpus_sha = hashlib.sha256(''.join(e['sha256'] for e in entries).encode()).hexdigest()
  manifest = {
    'format': shards_lib.FORMAT,
    'spec': want,
    'listing': listing,
    'dtype': dtype.str,
    'tokenizer': tok_info,
    'corpus_sha256': corpus_sha,
    'shards': entries,
    'splits': totals,
    'docs_read': sum(e['docs_read'] for e in entries),
    'chars': sum(e['chars'] for e in entries),
    'eval_split': f'whole documents with sha256(text)[:8] / 2**64 < {eval_fraction}',
    'seconds': round(time.time() - t0, 2),
    'workers': workers,
    'python': sys.version.split()[0],
  }
  if stats.files:
    manifest['text_files'] = dict(vars(stats))
    print(stats.summary())
  shards_lib.write_json(out / shards_lib.MANIFEST, manifest)
  (out / PROGRESS).unlink(missing_ok=True)
  print(
    f'prepare: {manifest["docs_read"]} documents, {manifest["chars"] / 1e6:.1f} M chars -> '
    f'{totals["train"]["tokens"]:,} train / {totals["eval"]["tokens"]:,} eval tokens in '
    f'{len(entries)} shard(s), {manifest["seconds"]} s, {workers} worker(s): {out}'
  )
  return manifest


if __name__ == '__main__':
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  from lm import cli  # pylint: disable=g-import-not-at-top
  from lm.data import mixture  # pylint: disable=g-import-not-at-top

  config_flags.DEFINE_config_file('config', None, 'A train.py config file.', lock_config=True)
  flags.mark_flags_as_required(['config'])
  # Run the importable module's code (through lm.data.mixture, which prepares each source of a
  # data.mixture), not __main__'s: spawned workers unpickle its functions by module name.
  cli.run(mixture.main)
