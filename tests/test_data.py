"""Data pipeline tests: each checks against a reference computed independently here."""

import os

import ml_collections
import numpy as np
import pytest

from lm.data import text_files
from lm.data import corpus as corpus_lib
from lm.data import tokenizer as tok_lib
from lm.data.pretrain import CLMBatcher, MLMBatcher, TokenizedCorpus

SENTENCE = 'The cats sat on the mat, and the list.append method returned None!'


@pytest.fixture(scope='module')
def docs():
  return corpus_lib.python_docs_corpus()


@pytest.fixture(scope='module')
def wordpiece(docs):
  return tok_lib.train_tokenizer(docs[:120], 'wordpiece', 500)


@pytest.fixture(scope='module')
def bpe(docs):
  return tok_lib.train_tokenizer(docs[:120], 'bpe', 400)


def random_docs(tokenizer, n_docs=40, seed=0, lo=20, hi=300):
  """Documents of random non-special ids: every window of a few ids is unique, so a
  sequence can be traced back to its one source document and offset."""
  rng = np.random.default_rng(seed)
  vocab = np.setdiff1d(np.arange(tokenizer.vocab_size), tokenizer.special_ids)
  return [list(rng.choice(vocab, rng.integers(lo, hi))) for _ in range(n_docs)]


def find(seq, docs):
  """All (doc, offset) where seq occurs contiguously; plain Python, no shared code."""
  seq, n = list(seq), len(seq)
  return [
    (d, i) for d, doc in enumerate(docs) for i in range(len(doc) - n + 1) if doc[i : i + n] == seq
  ]


# ---------------------------------------------------------------- corpus


def test_python_docs_corpus(docs):
  assert sum(map(len, docs)) > 400_000
  assert all(isinstance(d, str) and d.strip() for d in docs)
  assert corpus_lib.python_docs_corpus() == docs  # deterministic order
  assert any('comprehension' in d for d in docs)


def test_read_text_files_repairs_and_counts(tmp_path):
  (tmp_path / 'a.txt').write_bytes(b'first line\nsecond \xff\xfe line\n\n  \n\ndoc two\n')
  (tmp_path / 'b.txt').write_bytes('doc three \ufffd kept\n'.encode())
  docs, stats = text_files.read_text_files(str(tmp_path / '*.txt'))
  assert docs == ['first line\nsecond \ufffd\ufffd line', 'doc two', 'doc three \ufffd kept']
  assert (stats.files, stats.documents, stats.lines) == (2, 3, 4)
  assert stats.replaced_chars == 2  # the file's own U+FFFD is not counted as damage
  assert (stats.empty_lines, stats.long_lines) == (3, 0)


def test_read_text_files_splits_a_10mb_line(tmp_path):
  (tmp_path / 'big.txt').write_text('x' * 10_000_000 + '\n')
  docs, stats = text_files.read_text_files([str(tmp_path / 'big.txt')])
  assert stats.long_lines == 1 and len(docs) == 1
  pieces = docs[0].split('\n')
  assert len(pieces) == 10 and all(len(p) == text_files.MAX_LINE_CHARS for p in pieces)


def test_read_text_files_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='nope.txt'):
    text_files.read_text_files(str(tmp_path / 'nope.txt'))
  with pytest.raises(FileNotFoundError, match=r'\*.md'):
    text_files.read_text_files(str(tmp_path / '*.md'))
  (tmp_path / 'blank.txt').write_text('\n   \n\n')
  with pytest.raises(ValueError, match='empty'):
    text_files.read_text_files(str(tmp_path / 'blank.txt'))


def test_load_corpus_dispatch(tmp_path, docs):
  (tmp_path / 'a.txt').write_text('one\n\ntwo\n\nthree\n')
  cfg = ml_collections.ConfigDict(
    dict(source='files', files=f' {tmp_path}/a.txt ,', max_documents=2)
  )
  assert corpus_lib.load_corpus(cfg) == ['one', 'two']
  cfg = ml_collections.ConfigDict(dict(source='python_docs', max_documents=0))
  assert corpus_lib.load_corpus(cfg) == docs
  with pytest.raises(ValueError, match='files'):
    corpus_lib.load_corpus(ml_collections.ConfigDict(dict(source='files', files='')))


def tfds_cfg(name, data_dir, **kw):
  return ml_collections.ConfigDict(
    dict(
      source='tfds',
      tfds_name=name,
      split='train',
      data_dir=str(data_dir),
      text_key='text',
      max_documents=0,
      **kw,
    )
  )


@pytest.mark.slow  # imports TensorFlow (tfds): ~10 s the fast tier does not pay
def test_load_corpus_tfds_mocked(tmp_path):
  import tensorflow_datasets as tfds

  capped = tfds_cfg('lm1b', tmp_path)
  capped.max_documents = 3
  with tfds.testing.mock_data(num_examples=7, data_dir=str(tmp_path)):
    got = corpus_lib.load_corpus(tfds_cfg('lm1b', tmp_path))
    assert corpus_lib.load_corpus(capped) == got[:3]
  assert len(got) == 7 and all(isinstance(t, str) for t in got)


def test_load_corpus_tfds_not_prepared(tmp_path):
  with pytest.raises(FileNotFoundError, match='tfds build imdb_reviews'):
    corpus_lib.load_corpus(tfds_cfg('imdb_reviews', tmp_path))


@pytest.mark.slow  # the fast tier's 3-minute budget; a TFDS build
def test_text_files_tfds_builder(tmp_path):
  import tensorflow_datasets as tfds
  from lm.data.text_dataset import build_text_files_dataset, is_validation

  texts = [f'document number {i}\nsecond line {i}' for i in range(60)]
  (tmp_path / 'in.txt').write_text('\n\n'.join(texts))
  data_dir = tmp_path / 'tfds'
  builder = build_text_files_dataset(str(tmp_path / 'in.txt'), str(data_dir), 0.2)
  expected_val = sorted(t for t in texts if is_validation(t, 0.2))
  assert 0 < len(expected_val) < len(texts)
  assert builder.info.splits['validation'].num_examples == len(expected_val)
  loaded = {
    s: sorted(
      x['text'].decode()
      for x in tfds.as_numpy(
        tfds.load('local_text_files', split=s, data_dir=str(data_dir), download=False)
      )
    )
    for s in ('train', 'validation')
  }
  assert loaded['validation'] == expected_val
  assert sorted(loaded['train'] + loaded['validation']) == sorted(texts)
  assert sorted(corpus_lib.load_corpus(tfds_cfg('local_text_files', data_dir))) == loaded['train']


# ---------------------------------------------------------------- tokenizer


@pytest.mark.parametrize('kind', ['wordpiece', 'bpe'])
def test_tokenizer_train_save_load(kind, docs, wordpiece, bpe, tmp_path):
  tok = {'wordpiece': wordpiece, 'bpe': bpe}[kind]
  again = tok_lib.train_tokenizer(docs[:120], kind, tok.vocab_size)
  assert again.hf.to_str() == tok.hf.to_str()  # deterministic training
  ids = tok.encode(SENTENCE)
  assert tok.encode_batch([SENTENCE, 'x']) == [ids, tok.encode('x')]
  text = SENTENCE.lower() if kind == 'wordpiece' else SENTENCE
  assert tok.decode(ids).replace(' ', '') == text.replace(' ', '')
  tok.save(str(tmp_path))
  loaded = tok_lib.Tokenizer.load(str(tmp_path / 'tokenizer.json'))
  assert loaded.kind == kind and loaded.encode(SENTENCE) == ids
  specials = ('pad_id', 'unk_id', 'cls_id', 'sep_id', 'mask_id', 'bos_id', 'eos_id')
  assert [getattr(loaded, s) for s in specials] == [getattr(tok, s) for s in specials]


def test_special_ids(wordpiece, bpe):
  assert (
    wordpiece.pad_id,
    wordpiece.unk_id,
    wordpiece.cls_id,
    wordpiece.sep_id,
    wordpiece.mask_id,
  ) == (0, 1, 2, 3, 4)
  assert wordpiece.bos_id is wordpiece.eos_id is None
  eos, pad = bpe.hf.token_to_id('<|endoftext|>'), bpe.hf.token_to_id('<pad>')
  assert bpe.bos_id == bpe.eos_id == eos and bpe.pad_id == pad != eos
  assert bpe.cls_id is bpe.mask_id is bpe.unk_id is None
  assert bpe.encode('a<|endoftext|>') == bpe.encode('a') + [eos]


def test_from_hf_files_vocab_txt(tmp_path):
  vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'the', 'cat', '##s', 'sat', '.']
  (tmp_path / 'vocab.txt').write_text('\n'.join(vocab) + '\n')
  for path in (tmp_path, tmp_path / 'vocab.txt'):
    tok = tok_lib.from_hf_files(str(path))
    assert tok.kind == 'wordpiece' and tok.vocab_size == len(vocab)
    assert tok.encode('The cats sat. dog') == [5, 6, 7, 8, 9, 1]
    assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 2, 3, 4)
    assert tok.decode([5, 6, 7]) == 'the cats'


def test_from_hf_files_gpt2_vocab_merges(bpe, tmp_path):
  bpe.hf.model.save(str(tmp_path))  # writes GPT-2 style vocab.json + merges.txt
  assert sorted(os.listdir(tmp_path)) == ['merges.txt', 'vocab.json']
  tok = tok_lib.from_hf_files(str(tmp_path))
  assert tok.kind == 'bpe' and tok.encode(SENTENCE) == bpe.encode(SENTENCE)
  assert tok.decode(tok.encode(SENTENCE)) == SENTENCE
  assert tok.eos_id == bpe.eos_id and tok.pad_id == bpe.pad_id


def test_tokenizer_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='missing'):
    tok_lib.from_hf_files(str(tmp_path / 'missing'))
  with pytest.raises(FileNotFoundError, match='vocab.txt'):
    tok_lib.from_hf_files(str(tmp_path))
  with pytest.raises(ValueError, match='kind'):
    tok_lib.train_tokenizer(['text'], 'unigram', 100)
  with pytest.raises(ValueError, match='too small'):
    tok_lib.train_tokenizer(['text'], 'bpe', 100)


# ---------------------------------------------------------------- MLM


@pytest.fixture(scope='module')
def mlm_setup(wordpiece):
  src = random_docs(wordpiece)
  return src, MLMBatcher(TokenizedCorpus.from_lists(src), wordpiece, 128, 32, seed=3)


def reconstruct(batch):
  """Undo masking with masked_positions/masked_ids."""
  original = batch['input_ids'].copy()
  for r in range(len(original)):
    w = batch['masked_weights'][r] > 0
    original[r, batch['masked_positions'][r][w]] = batch['masked_ids'][r][w]
  return original


def test_mlm_masking_statistics(mlm_setup, wordpiece):
  _, batcher = mlm_setup
  specials = set(wordpiece.special_ids)
  n_candidates = n_masked = n_mask_tok = n_same = 0
  for step in range(50):
    b = batcher.get_batch(step)
    assert b['input_ids'].shape == (32, 128) and b['masked_positions'].shape == (32, 20)
    assert b['input_ids'].dtype == b['masked_positions'].dtype == np.int32
    assert b['masked_weights'].dtype == np.float32
    original = reconstruct(b)
    for r in range(32):
      w = b['masked_weights'][r] > 0
      pos, ids = b['masked_positions'][r][w], b['masked_ids'][r][w]
      real = int(b['attention_mask'][r].sum())
      assert b['attention_mask'][r][:real].all() and not b['attention_mask'][r][real:].any()
      nonspecial = [i for i in range(real) if original[r, i] not in specials]
      assert len(pos) == max(1, int(np.floor(len(nonspecial) * 0.15 + 0.5)))
      assert len(set(pos)) == len(pos) and set(pos) <= set(nonspecial)
      assert not specials & set(ids.tolist())
      assert (b['masked_positions'][r][~w] == 0).all() and (b['masked_ids'][r][~w] == 0).all()
      n_candidates += len(nonspecial)
      n_masked += len(pos)
      n_mask_tok += int((b['input_ids'][r, pos] == wordpiece.mask_id).sum())
      n_same += int((b['input_ids'][r, pos] == ids).sum())
  assert abs(n_masked / n_candidates - 0.15) < 0.01
  assert abs(n_mask_tok / n_masked - 0.8) < 0.03
  assert abs(n_same / n_masked - 0.1) < 0.03
  assert abs((n_masked - n_mask_tok - n_same) / n_masked - 0.1) < 0.03


def test_mlm_nsp_structure_and_provenance(mlm_setup, wordpiece):
  src, batcher = mlm_setup
  cls, sep = wordpiece.cls_id, wordpiece.sep_id
  labels = np.concatenate([batcher.get_batch(s)['nsp_labels'] for s in range(50)])
  assert labels.dtype == np.int32 and abs(labels.mean() - 0.5) < 0.05
  for step in range(4):
    b = batcher.get_batch(step)
    original = reconstruct(b)
    for r in range(32):
      real = original[r][: int(b['attention_mask'][r].sum())].tolist()
      assert real[0] == cls and real[-1] == sep and real.count(sep) == 2
      k = real.index(sep)
      a, seg_b = real[1:k], real[k + 1 : -1]
      assert a and seg_b
      types = b['token_type_ids'][r]
      assert (types[: k + 1] == 0).all() and (types[k + 1 : len(real)] == 1).all()
      assert (types[len(real) :] == 0).all() and (b['input_ids'][r, len(real) :] == 0).all()
      docs_a = {d for d, _ in find(a, src)}
      assert docs_a, 'A (unmasked back) must be a slice of a source document'
      if b['nsp_labels'][r] == 0:
        assert find(a + seg_b, src), 'label 0: B continues A in the same document'
      else:
        docs_b = {d for d, _ in find(seg_b, src)}
        assert docs_b and not docs_b & docs_a, 'label 1: B from another document'


def test_mlm_without_nsp(wordpiece):
  src = random_docs(wordpiece, n_docs=5)
  b = MLMBatcher(
    TokenizedCorpus.from_lists(src), wordpiece, 64, 8, seed=0, nsp=False, max_predictions=4
  ).get_batch(0)
  assert 'nsp_labels' not in b and not b['token_type_ids'].any()
  assert (b['masked_weights'].sum(1) == 4).all()  # capped at max_predictions
  for r in range(8):
    real = reconstruct(b)[r][: int(b['attention_mask'][r].sum())].tolist()
    assert real[0] == wordpiece.cls_id and real[-1] == wordpiece.sep_id
    assert find(real[1:-1], src)


# ---------------------------------------------------------------- CLM


def test_clm_packing(bpe):
  src = random_docs(bpe, n_docs=30, lo=1, hi=60)
  eos, T = bpe.eos_id, 64
  stream = [t for doc in src for t in doc + [eos]]
  batcher = CLMBatcher(TokenizedCorpus.from_lists(src), bpe, T, 16, seed=5)
  seen_boundary = False
  for step in range(5):
    b = batcher.get_batch(step)
    assert all(b[k].shape == (16, T) for k in ('input_ids', 'targets', 'segment_ids', 'positions'))
    assert b['weights'].dtype == np.float32 and b['segment_ids'].dtype == np.int32
    for r in range(16):
      x = b['input_ids'][r].tolist()
      offsets = [o for o in range(len(stream) - T) if stream[o : o + T] == x]
      assert offsets, 'row must be a window of the doc+eos stream'
      o = offsets[0]
      assert b['targets'][r].tolist() == stream[o + 1 : o + T + 1]
      seg, pos, segs, poss, weights = 1, 0, [], [], []
      for i, tok in enumerate(x):
        if i and x[i - 1] == eos:
          seg, pos = seg + 1, 0
        segs.append(seg)
        poss.append(pos)
        weights.append(0.0 if tok == eos else 1.0)
        pos += 1
      assert b['segment_ids'][r].tolist() == segs
      assert b['positions'][r].tolist() == poss
      assert b['weights'][r].tolist() == weights
      seen_boundary |= seg > 1
  assert seen_boundary


# ---------------------------------------------------------------- determinism and errors


@pytest.fixture(scope='module')
def batchers(wordpiece, bpe):
  mlm = MLMBatcher(TokenizedCorpus.from_lists(random_docs(wordpiece, 10)), wordpiece, 32, 8, seed=7)
  clm = CLMBatcher(TokenizedCorpus.from_lists(random_docs(bpe, 10)), bpe, 32, 8, seed=7)
  return {'mlm': mlm, 'clm': clm}


@pytest.mark.parametrize('name', ['mlm', 'clm'])
def test_batches_are_step_indexed_and_process_sliced(batchers, name):
  batcher = batchers[name]
  full = batcher.get_batch(11)
  again = batcher.get_batch(11)
  assert all(np.array_equal(full[k], again[k]) for k in full)
  assert not np.array_equal(full['input_ids'], batcher.get_batch(12)['input_ids'])
  for pc in (2, 4):
    parts = [batcher.get_batch(11, pi, pc) for pi in range(pc)]
    for k in full:
      np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), full[k])
  evals = [b['input_ids'] for b in batcher.eval_batches(2)]
  np.testing.assert_array_equal(evals[1], batcher.get_batch(1)['input_ids'])
  with pytest.raises(ValueError, match='divide'):
    batcher.get_batch(0, 0, 3)


def test_corpus_too_small(wordpiece, bpe):
  with pytest.raises(ValueError, match='too small'):
    CLMBatcher(TokenizedCorpus.from_lists([[5, 6, 7]]), bpe, 32, 2, seed=0)
  with pytest.raises(ValueError, match='too small'):
    MLMBatcher(TokenizedCorpus.from_lists([[5, 6, 7]]), wordpiece, 32, 2, seed=0)
  with pytest.raises(ValueError, match='wordpiece'):
    MLMBatcher(TokenizedCorpus.from_lists([[5, 6], [7, 8]]), bpe, 32, 2, seed=0)
