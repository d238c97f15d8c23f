"""Prepared data: shards equal a direct tokenization, resume, reuse, and bad input."""

import hashlib
import os

import ml_collections
import numpy as np
import pytest

from lm.data import split as split_lib
from lm import defaults
from lm.data import corpus as corpus_lib
from lm.data import prepare
from lm.data import pretrain
from lm.data import shards


def write_corpus(directory, n_files=3, docs_per_file=40, seed=0):
  """Text files of blank-line separated documents; returns the documents in stream order."""
  rng = np.random.default_rng(seed)
  words = (
    'alpha beta gamma delta the of list dict value return raise yield lambda class '
    'import module function object string bytes int float none true false'
  ).split()
  os.makedirs(directory, exist_ok=True)
  docs = []
  for f in range(n_files):
    file_docs = [
      ' '.join(rng.choice(words, rng.integers(3, 80))) + f' doc{f}_{d}.'
      for d in range(docs_per_file)
    ]
    with open(os.path.join(directory, f'part{f}.txt'), 'w', encoding='utf-8') as out:
      out.write('\n\n'.join(file_docs) + '\n')
    docs += file_docs
  return docs


def data_config(files, out, **overrides) -> ml_collections.ConfigDict:
  c = defaults.pretraining().data
  c.update(
    source='files',
    files=str(files),
    prepared_dir=str(out),
    prepare_workers=0,
    shard_mb=0.004,
    eval_fraction=0.2,
  )
  c.tokenizer.update(kind='bpe', vocab_size=300, sample_mb=1)
  c.update(**overrides)
  return c


def tree_digest(directory):
  """sha256 of every file under a directory, by relative path."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return out


def split_docs(corpus):
  return [corpus.doc(d).tolist() for d in range(corpus.num_docs)]


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  root = tmp_path_factory.mktemp('src')
  return root, write_corpus(root)


@pytest.fixture(scope='module')
def prepared(source, tmp_path_factory):
  root, docs = source
  out = tmp_path_factory.mktemp('prepared') / 'p'
  directory, manifest, tok = prepare.ensure(data_config(root, out))
  return directory, manifest, tok


def test_shards_equal_direct_tokenization(source, prepared):
  """Every document, tokenized on its own, lands in the split its hash names, in order."""
  _, docs = source
  directory, manifest, tok = prepared
  expected = {'train': [], 'eval': []}
  for doc in docs:
    held = split_lib.doc_held_out(hashlib.sha256(doc.encode()).digest(), 0.2)
    expected['eval' if held else 'train'].append(tok.encode(doc))
  assert 0 < len(expected['eval']) < len(docs) / 2
  for split in ('train', 'eval'):
    got = shards.open_split(directory, split, manifest)
    assert split_docs(got) == expected[split]
    assert manifest['splits'][split] == {
      'docs': len(expected[split]),
      'tokens': sum(map(len, expected[split])),
    }
  assert len(manifest['shards']) > 2  # shard_mb is tiny: the corpus spans several shards
  assert manifest['docs_read'] == len(docs) and manifest['chars'] == sum(map(len, docs))
  assert manifest['dtype'] == '<u2'
  # The tokenizer never saw held-out text, and is the one saved beside the shards.
  assert manifest['tokenizer']['trained_on_docs'] == len(expected['train'])


def test_worker_processes_write_identical_bytes(source, prepared, tmp_path):
  root, _ = source
  directory, _, _ = prepared
  other, _, _ = prepare.ensure(data_config(root, tmp_path / 'w2', prepare_workers=2))
  a, b = tree_digest(directory), tree_digest(other)
  for d in (a, b):
    d.pop('manifest.json'), d.pop('.lock')
  assert a == b and len(a) > 10


def test_interrupted_preparation_resumes(source, prepared, tmp_path, monkeypatch):
  """Killed after two shards (a third half-written): the rerun keeps the two, redoes the rest
  and ends byte-identical to the uninterrupted preparation."""
  root, _ = source
  cfg = data_config(root, tmp_path / 'p')
  commit = prepare._ShardWriter.commit
  calls = []

  def crash_on_third(self):
    calls.append(self.index)
    if len(calls) == 3:
      raise KeyboardInterrupt
    return commit(self)

  with monkeypatch.context() as m:
    m.setattr(prepare._ShardWriter, 'commit', crash_on_third)
    with pytest.raises(KeyboardInterrupt):
      prepare.ensure(cfg)
  out = tmp_path / 'p'
  assert not (out / 'manifest.json').exists()
  (out / 'shards' / '00002.train.bin').write_bytes(b'half a shard')  # no record: never used
  monkeypatch.setattr(prepare.tokenizer_lib, 'train_tokenizer', lambda *a: pytest.fail('retrained'))
  _, manifest, _ = prepare.ensure(cfg)
  untimed = lambda m: {k: v for k, v in m['tokenizer'].items() if k != 'seconds'}
  assert untimed(manifest) == untimed(prepared[1])  # what the tokenizer was trained on, kept
  a, b = tree_digest(prepared[0]), tree_digest(out)
  for d in (a, b):
    d.pop('manifest.json'), d.pop('.lock')
  assert a == b


def test_reuse_reads_no_text(source, prepared, monkeypatch):
  """A later run, or another host (process_index > 0), only opens the prepared files."""
  root, _ = source
  directory, manifest, tok = prepared
  cfg = data_config(root, directory)
  monkeypatch.setattr(corpus_lib, 'iter_documents', lambda *a: pytest.fail('read the corpus'))
  monkeypatch.setattr(prepare, 'prepare', lambda *a: pytest.fail('prepared again'))
  for process_index in (0, 1):
    got_dir, got_manifest, got_tok = prepare.ensure(cfg, process_index, timeout=5)
    assert (got_dir, got_manifest) == (directory, manifest)
    assert got_tok.hf.to_str() == tok.hf.to_str()


def test_default_dir_is_named_by_the_data_config(source, monkeypatch, tmp_path):
  root, _ = source
  monkeypatch.setenv('LM_DATA_CACHE', str(tmp_path))
  cfg = data_config(root, '')
  first = prepare.resolve_dir(cfg)
  assert first.startswith(str(tmp_path)) and first == prepare.resolve_dir(data_config(root, ''))
  cfg.tokenizer.vocab_size = 301
  assert prepare.resolve_dir(cfg) != first


def test_bad_prepared_data_is_named_and_left_alone(source, prepared, tmp_path):
  root, _ = source
  directory, manifest, _ = prepared
  before = tree_digest(directory)

  other_src = tmp_path / 'other'
  write_corpus(other_src, n_files=1, seed=1)
  with pytest.raises(ValueError, match='another corpus or tokenizer.*files'):
    prepare.ensure(data_config(other_src, directory))
  with pytest.raises(ValueError, match='another corpus or tokenizer.*vocab_size'):
    prepare.ensure(
      data_config(root, directory, tokenizer=dict(kind='bpe', vocab_size=400, sample_mb=1, path=''))
    )
  foreign = tmp_path / 'foreign'
  foreign.mkdir()
  (foreign / 'notes.txt').write_text('mine')
  with pytest.raises(ValueError, match='not empty'):
    prepare.ensure(data_config(root, foreign))
  assert (foreign / 'notes.txt').read_text() == 'mine'
  assert tree_digest(directory) == before  # nothing was overwritten

  # Damage a copy: a missing shard, a truncated one, another tokenizer, a changed source.
  import shutil

  for damage, error, pattern in [
    (
      lambda d: os.remove(d / 'shards' / '00001.train.bin'),
      FileNotFoundError,
      '00001.train.bin.*missing',
    ),
    (
      lambda d: open(d / 'shards' / '00000.train.bin', 'ab').write(b'xx'),
      ValueError,
      '00000.train.bin.*corrupt',
    ),
    (
      lambda d: (d / 'tokenizer.json').write_text('{}'),
      ValueError,
      'tokenizer.json.*not the tokenizer',
    ),
  ]:
    copy = tmp_path / f'copy_{pattern[:5]}'
    shutil.copytree(directory, copy)
    damage(copy)
    with pytest.raises(error, match=pattern):
      _, m, _ = prepare.ensure(data_config(root, copy))
      shards.open_split(copy, 'train', m)
  grown = tmp_path / 'grown'
  shutil.copytree(root, grown)
  with open(grown / 'part0.txt', 'a', encoding='utf-8') as f:
    f.write('\n\none more document\n')
  copy = tmp_path / 'copy_src'
  shutil.copytree(directory, copy)
  (copy / 'manifest.json').write_text(
    (copy / 'manifest.json').read_text().replace(str(root), str(grown))
  )
  with pytest.raises(ValueError, match='source files changed'):
    prepare.ensure(data_config(grown, copy))


def test_sharded_corpus_reads_like_one_corpus(tmp_path):
  """Shards on disk, read through memmaps or ranged reads, give the documents and windows of
  the same documents held in memory; a CLM window never crosses a shard."""
  rng = np.random.default_rng(0)
  docs = [list(rng.integers(3, 300, rng.integers(1, 40))) for _ in range(60)]
  groups = [docs[:25], docs[25:26], docs[26:]]
  parts = []
  for i, group in enumerate(groups):
    c = pretrain.TokenizedCorpus.from_lists(group)
    path = tmp_path / f'{i}.bin'
    path.write_bytes(c.tokens.astype('<u2').tobytes())
    tokens = (
      shards._RemoteTokens(path, np.dtype('<u2'), c.num_tokens)
      if i == 0
      else np.memmap(path, dtype='<u2', mode='r')
    )
    parts.append(pretrain.TokenizedCorpus(tokens, c.doc_starts))
  sharded, whole = pretrain.ShardedCorpus(parts), pretrain.TokenizedCorpus.from_lists(docs)
  assert (sharded.num_docs, sharded.num_tokens) == (whole.num_docs, whole.num_tokens)
  assert all(sharded.doc(d).tolist() == whole.doc(d).tolist() for d in range(len(docs)))
  for p in range(0, whole.num_tokens, 7):
    assert sharded.doc_at_token(p) == whole.doc_at_token(p)
  T = 16
  assert sharded.num_windows(T) == sum(max(0, sum(map(len, g)) + len(g) - T) for g in groups)
  for o in range(sharded.num_windows(T)):
    ids, is_eos = sharded.window(o, T + 1)
    s = int(np.searchsorted(np.cumsum([p.num_windows(T) for p in parts]), o, side='right'))
    stream = [t for doc in groups[s] for t in doc + [-1]]
    hits = [i for i in range(len(stream) - T) if stream[i : i + T + 1] == ids.tolist()]
    assert hits, f'window {o} is not inside shard {s}'
    assert (ids == -1).tolist() == is_eos.tolist()


@pytest.mark.slow
def test_tfds_dataset_of_100k_documents_is_streamed_and_trained_on(tmp_path, run, monkeypatch):
  """A locally built TFDS dataset of 100k documents: preparation holds a bounded amount of text
  (traced Python memory a fraction of the corpus, where a list of it would take more than the
  corpus), and train.py trains on the prepared shards."""
  import tracemalloc
  from lm.data import text_dataset

  n = 100_000
  rng = np.random.default_rng(0)
  words = np.array('the of and a to in is it that for on with as by this be are from or'.split())
  text = '\n\n'.join(' '.join(rng.choice(words, 30)) + f' {i}' for i in range(n))
  (tmp_path / 'big.txt').write_text(text)
  text_dataset.build_text_files_dataset(str(tmp_path / 'big.txt'), str(tmp_path / 'tfds'), 0.01)
  cfg = data_config(
    '',
    tmp_path / 'prep',
    source='tfds',
    tfds_name='local_text_files',
    data_dir=str(tmp_path / 'tfds'),
    shard_mb=1.0,
    eval_fraction=0.02,
  )
  cfg.tokenizer.update(vocab_size=400, sample_mb=0.25)
  monkeypatch.setattr(prepare, 'CHUNK_CHARS', 32 << 10)  # what bounds memory: chunk + sample
  del text
  tracemalloc.start()
  directory, manifest, _ = prepare.ensure(cfg)
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  print(
    f'{manifest["docs_read"]} documents, {manifest["chars"] / 1e6:.1f} M chars, traced peak '
    f'{peak / 1e6:.1f} MB, {len(manifest["shards"])} shards'
  )
  assert manifest['docs_read'] > 0.98 * n  # the train split of the TFDS dataset
  assert peak < manifest['chars'] / 4
  out = run(
    'train.py',
    '--config=configs/gpt_base.py',
    f'--workdir={tmp_path / "w"}',
    '--config.data.source=tfds',
    '--config.data.tfds_name=local_text_files',
    f'--config.data.data_dir={tmp_path / "tfds"}',
    f'--config.data.prepared_dir={directory}',
    '--config.data.shard_mb=1.0',
    '--config.data.eval_fraction=0.02',
    '--config.data.tokenizer.vocab_size=400',
    '--config.data.tokenizer.sample_mb=0.25',
    '--config.train.steps=3',
    '--config.log_every=1',
    '--config.eval_every=3',
    '--config.train.batch_size=4',
    '--config.eval_batches=1',
  ).stdout
  assert '[train 3/3]' in out and 'prepare:' not in out
