"""Thin wrapper over HF ``tokenizers``: one object exposing ids the batchers need.

The batchers insert special tokens themselves, so :meth:`Tokenizer.encode` never
adds any; the tokenizer.json still carries the usual post-processor so the saved
file behaves like a stock BERT/GPT-2 tokenizer in other tools. HF model directories
load too: any BPE ``tokenizer.json`` (GPT-2, Llama, Mistral, Qwen2; special tokens
named by ``tokenizer_config.json`` when it is there) and sentencepiece BPE
``tokenizer.model`` files (Llama, Mistral), converted as ``transformers`` converts them.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from typing import Iterable, Iterator

import numpy as np

from tokenizers import AddedToken, Regex
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

WORDPIECE_SPECIALS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')  # [PAD] = 0
EOS, BPE_PAD = '<|endoftext|>', '<pad>'
BPE_SPECIALS = (EOS, BPE_PAD)
KINDS = ('wordpiece', 'bpe')


# Where no tokenizer_config.json names them: GPT-2 / Qwen2, sentencepiece (Llama 2, Mistral),
# Llama 3.
_BPE_BOS = (EOS, '<s>', '<|begin_of_text|>')
_BPE_EOS = (EOS, '</s>', '<|end_of_text|>')


class Tokenizer:
  """Kind-aware view of a ``tokenizers.Tokenizer``; unused special ids are None.

  WordPiece (BERT): pad/unk/cls/sep/mask ids. BPE and unigram (T5): bos and eos as ``special`` (the
  ``*_token`` entries of an HF tokenizer_config.json) names them, else the first of
  ``_BPE_BOS`` / ``_BPE_EOS`` in the vocab (``<|endoftext|>`` for ours and GPT-2);
  pad is ``<pad>`` if the vocab has it, else eos (the usual GPT-2 convention, so
  stock GPT-2 files need no new token).
  """

  def __init__(self, hf: HFTokenizer, special: dict | None = None):
    self.hf = hf
    if isinstance(hf.model, models.WordPiece):
      self.kind = 'wordpiece'
    elif isinstance(hf.model, models.BPE):
      self.kind = 'bpe'
    elif isinstance(hf.model, models.Unigram):  # T5's sentencepiece; specials as for BPE
      self.kind = 'unigram'
    else:
      raise ValueError(
        f'Unsupported tokenizer model {type(hf.model).__name__}: '
        'use a WordPiece, BPE or unigram tokenizer.json.'
      )
    tid = hf.token_to_id
    special = special or {}
    first = lambda key, *tokens: next(  # noqa: E731
      (tid(t) for t in (special.get(key), *tokens) if t and tid(t) is not None), None
    )
    wp = self.kind == 'wordpiece'
    self.cls_id = tid('[CLS]') if wp else None
    self.sep_id = tid('[SEP]') if wp else None
    self.mask_id = tid('[MASK]') if wp else None
    self.bos_id = None if wp else first('bos_token', *_BPE_BOS)
    self.eos_id = None if wp else first('eos_token', *_BPE_EOS)
    self.unk_id = tid('[UNK]') if wp else first('unk_token', '<unk>')
    self.pad_id = tid('[PAD]') if wp else first('pad_token', BPE_PAD)
    if self.pad_id is None:
      self.pad_id = self.eos_id

  @property
  def vocab_size(self) -> int:
    return self.hf.get_vocab_size(with_added_tokens=True)

  @property
  def special_ids(self) -> list[int]:
    """Every id of an added special token (what MLM must never mask or sample)."""
    return sorted(i for i, t in self.hf.get_added_tokens_decoder().items() if t.special)

  def encode(self, text: str) -> list[int]:
    return self.hf.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
    return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids, skip_special_tokens: bool = True) -> str:
    return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def save(self, directory: str) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, 'tokenizer.json')
    self.hf.save(path)
    return path

  @classmethod
  def load(cls, path: str) -> 'Tokenizer':
    return from_hf_files(path)

  def __repr__(self):
    return f'Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})'


def _bert_pipeline(hf: HFTokenizer, lowercase: bool) -> HFTokenizer:
  hf.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
  hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  hf.decoder = decoders.WordPiece(prefix='##')
  return hf


def _add_bert_post_processor(hf: HFTokenizer) -> HFTokenizer:
  cls_id, sep_id = hf.token_to_id('[CLS]'), hf.token_to_id('[SEP]')
  if cls_id is not None and sep_id is not None:
    hf.post_processor = processors.TemplateProcessing(
      single='[CLS] $A [SEP]',
      pair='[CLS] $A [SEP] $B:1 [SEP]:1',
      special_tokens=[('[CLS]', cls_id), ('[SEP]', sep_id)],
    )
  return hf


def _gpt2_pipeline(hf: HFTokenizer) -> HFTokenizer:
  hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  hf.decoder = decoders.ByteLevel()
  hf.post_processor = processors.ByteLevel(trim_offsets=False)
  return hf


def train_tokenizer(docs: Iterable[str], kind: str, vocab_size: int) -> Tokenizer:
  """Train a BERT-style WordPiece or GPT-2-style byte-level BPE tokenizer on ``docs``.

  ``docs`` may be any iterable (a streamed sample): it is read once and never held
  whole. Two runs on the same docs give byte-identical tokenizer.json files.
  """
  if kind not in KINDS:
    raise ValueError(f'Unknown tokenizer kind {kind!r}: use one of {KINDS}.')
  docs = iter(docs)
  first = next(docs, None)
  if first is None:
    raise ValueError('Cannot train a tokenizer on an empty corpus: check the data config.')
  docs = itertools.chain([first], docs)
  if kind == 'wordpiece':
    minimum = len(WORDPIECE_SPECIALS) + 1
  else:
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    minimum = len(BPE_SPECIALS) + len(alphabet)
  if vocab_size < minimum:
    raise ValueError(
      f'vocab_size={vocab_size} is too small for a {kind} tokenizer: use at least {minimum}.'
    )
  if kind == 'wordpiece':
    return Tokenizer(_train_wordpiece(docs, vocab_size))
  hf = _gpt2_pipeline(HFTokenizer(models.BPE()))
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    show_progress=False,
    special_tokens=list(BPE_SPECIALS),
    initial_alphabet=alphabet,
  )
  hf.train_from_iterator(docs, trainer=trainer)
  return Tokenizer(hf)


# WordPiece training. HF's WordPieceTrainer is a BpeTrainer that spells continuation
# symbols "##c" and numbers them in hash-map order; equal-count merges are then broken
# by those ids, so two runs learn different vocabularies. A prefix-free BpeTrainer
# numbers its whole alphabet by code point, so we train one on BERT-normalized text
# whose in-word non-first characters are shifted to private-use planes 15/16
# (c -> c + 0xF0000) and spell the learned tokens back with "##". That is the
# WordPieceTrainer's algorithm with "##c" numbered by code point: same word counts,
# same merges up to ties, same vocab size.
_CONT_SHIFT = 0xF0000  # BMP -> plane 15, plane 1 -> plane 16
_CONT_LIMIT = 0x20000  # continuation chars at or past this have no private-use image
_CHUNK_CHARS = 1 << 16  # normalized in ~64k-char batches, fed to the trainer in parallel
_NON_ASCII = re.compile(r'([^\x00-\x7f]+)')


def _train_wordpiece(docs: Iterable[str], vocab_size: int) -> HFTokenizer:
  bert = _bert_pipeline(HFTokenizer(models.WordPiece(unk_token='[UNK]')), lowercase=True)
  hf = HFTokenizer(models.BPE())
  hf.pre_tokenizer = bert.pre_tokenizer  # shifted chars are neither space nor punctuation
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size, show_progress=False, special_tokens=list(WORDPIECE_SPECIALS)
  )
  hf.train_from_iterator(_shifted_text(docs, bert.normalizer, bert.pre_tokenizer), trainer=trainer)
  learned = hf.get_vocab(with_added_tokens=False)
  rest = {_unshift(t) for t in learned if t not in WORDPIECE_SPECIALS}
  order = list(WORDPIECE_SPECIALS) + sorted(rest)  # ids: specials, then sorted
  bert.model = models.WordPiece({t: i for i, t in enumerate(order)}, unk_token='[UNK]')
  bert.add_special_tokens(list(WORDPIECE_SPECIALS))
  return _add_bert_post_processor(bert)


def _shifted_text(docs: Iterable[str], normalizer, pre_tokenizer) -> Iterator[str]:
  """BERT-normalized ``docs`` with every in-word non-first character shifted.

  Word boundaries are BertPreTokenizer's (whitespace and punctuation), found with
  numpy from a per-character table that the pre-tokenizer itself fills in for each
  new character, so no per-word Python runs. Words holding a character without a
  private-use image (past U+1FFFF in a continuation: only rare CJK extension
  ideographs survive BERT normalization there) or one already in planes 15/16 (only
  the noncharacters U+FFFFE/F, U+10FFFE/F survive) are left out of training.
  Last comes every continuation character unshifted and alone: the
  WordPieceTrainer's alphabet has every character as a word start too, and
  one-character words add no pairs, so the merges do not change.
  """
  known = np.zeros(0x110000, dtype=bool)
  splits = np.zeros(0x110000, dtype=bool)  # BertPreTokenizer splits around it
  seen = np.zeros(_CONT_LIMIT, dtype=bool)
  ascii_table = {c: normalizer.normalize_str(chr(c)) for c in range(128)}
  for chunk in _chunks(docs):
    text = _normalize(chunk, normalizer, ascii_table)
    if not text:
      continue
    cps = np.frombuffer(text.encode('utf-32-le'), dtype=np.uint32)
    for c in np.unique(cps[~known[cps]]).tolist():
      splits[c] = len(pre_tokenizer.pre_tokenize_str(f'a{chr(c)}a')) != 1
      known[c] = True
    boundary = splits[cps]
    cont = ~boundary
    cont[0] = False
    cont[1:] &= ~boundary[:-1]
    bad = (cont & (cps >= _CONT_LIMIT)) | (cps >= _CONT_SHIFT)
    if bad.any():  # blank out those words
      word_ids = np.cumsum(~cont)
      drop = np.isin(word_ids, word_ids[bad])
      cps, cont = np.where(drop, np.uint32(ord(' ')), cps), cont & ~drop
    seen[cps[cont]] = True
    shifted = np.where(cont, cps + np.uint32(_CONT_SHIFT), cps).astype('<u4')
    yield shifted.tobytes().decode('utf-32-le')
  yield ' '.join(map(chr, np.flatnonzero(seen).tolist()))


def _normalize(text: str, normalizer, ascii_table: dict) -> str:
  """``normalizer.normalize_str(text)``, several times faster on mostly-ASCII text.

  BertNormalizer maps ASCII characters one by one (``ascii_table``), and a run of
  non-ASCII characters can be normalized alone: its NFD reordering never crosses
  an ASCII character, and dropped ASCII controls are dropped first in BERT too.
  """
  parts = _NON_ASCII.split(text)  # ASCII, non-ASCII, ASCII, ...
  if len(parts) > len(text) // 32:  # many short runs: one call is faster
    return normalizer.normalize_str(text)
  parts[0::2] = [p.translate(ascii_table) for p in parts[0::2]]
  parts[1::2] = [normalizer.normalize_str(p) for p in parts[1::2]]
  return ''.join(parts)


def _chunks(docs: Iterable[str]) -> Iterator[str]:
  """Newline-joined batches of ~_CHUNK_CHARS (BERT normalizes per character and
  newline is whitespace, so batching changes no word); a longer doc is cut at its
  last space or newline in each _CHUNK_CHARS (mid-word only where it has none)."""
  batch, size = [], 0
  for doc in docs:
    start = 0
    while len(doc) - start > _CHUNK_CHARS:
      end = start + _CHUNK_CHARS
      cut = max(doc.rfind(' ', start, end), doc.rfind('\n', start, end))
      cut = cut if cut > start else end
      yield doc[start:cut]
      start = cut
    batch.append(doc[start:] if start else doc)
    size += len(doc) - start + 1
    if size >= _CHUNK_CHARS:
      yield '\n'.join(batch)
      batch, size = [], 0
  if batch:
    yield '\n'.join(batch)


def _unshift(token: str) -> str:
  """A learned token in WordPiece spelling: shifted first char -> "##" continuation."""
  text = ''.join(chr(ord(c) - _CONT_SHIFT) if ord(c) >= _CONT_SHIFT else c for c in token)
  return '##' + text if ord(token[0]) >= _CONT_SHIFT else text


def _wordpiece_from_vocab_txt(path: str) -> HFTokenizer:
  # BERT vocab.txt has no casing flag: lowercase unless the vocab has uppercase words.
  with open(path, encoding='utf-8') as f:
    words = [w.strip() for w in f]
  cased = any(w[:1] != '[' and w != w.lower() for w in words)
  hf = HFTokenizer(models.WordPiece.from_file(path, unk_token='[UNK]'))
  hf.add_special_tokens([w for w in WORDPIECE_SPECIALS if w in words])
  return _add_bert_post_processor(_bert_pipeline(hf, lowercase=not cased))


def _bpe_from_vocab_json(vocab: str, merges: str) -> HFTokenizer:
  hf = _gpt2_pipeline(HFTokenizer(models.BPE.from_file(vocab, merges)))
  with open(vocab, encoding='utf-8') as f:
    present = json.load(f)
  hf.add_special_tokens([t for t in BPE_SPECIALS if t in present])
  return hf


def _special_tokens(directory: str) -> dict:
  """bos/eos/pad/unk token strings from an HF tokenizer_config.json beside the tokenizer."""
  path = os.path.join(directory, 'tokenizer_config.json')
  if not os.path.isfile(path):
    return {}
  with open(path, encoding='utf-8') as f:
    config = json.load(f)
  out = {}
  for key in ('bos_token', 'eos_token', 'pad_token', 'unk_token'):
    v = config.get(key)
    out[key] = v.get('content') if isinstance(v, dict) else v
  return out


def _from_sentencepiece(path: str) -> HFTokenizer:
  """A sentencepiece BPE ``tokenizer.model`` (Llama, Mistral) as the ``tokenizers`` pipeline
  transformers' LlamaConverter builds from it: the same vocab, merges ranked by the merged
  piece's id, byte fallback, and the dummy-prefix "▁" as a normalizer (ids equal
  sentencepiece's own, tests/test_llama.py). A unigram one (T5's ``spiece.model``) goes to
  `_unigram_from_sentencepiece`."""
  try:
    from sentencepiece import sentencepiece_model_pb2  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f'{path} needs the sentencepiece package: pip install sentencepiece') from e
  proto = sentencepiece_model_pb2.ModelProto()
  with open(path, 'rb') as f:
    proto.ParseFromString(f.read())
  if proto.trainer_spec.model_type == proto.trainer_spec.UNIGRAM:
    return _unigram_from_sentencepiece(proto)
  if proto.trainer_spec.model_type != proto.trainer_spec.BPE:
    raise ValueError(
      f'{path} is a sentencepiece {proto.trainer_spec.ModelType.Name(proto.trainer_spec.model_type)}'
      ' model: only BPE (Llama, Mistral) and unigram (T5) ones load; give its tokenizer.json '
      'instead.'
    )
  vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
  merges = sorted(
    (i, j, piece[:j], piece[j:])
    for piece, i in vocab.items()
    for j in range(1, len(piece))
    if piece[:j] in vocab and piece[j:] in vocab
  )
  unk = proto.pieces[proto.trainer_spec.unk_id].piece
  hf = HFTokenizer(
    models.BPE(
      vocab, [(a, b) for _, _, a, b in merges], unk_token=unk, fuse_unk=True, byte_fallback=True
    )
  )
  kinds = proto.SentencePiece
  hf.add_special_tokens(
    [
      AddedToken(p.piece, normalized=False, special=True)
      for p in proto.pieces
      if p.type in (kinds.UNKNOWN, kinds.CONTROL)
    ]
  )
  hf.add_tokens(
    [AddedToken(p.piece, normalized=False) for p in proto.pieces if p.type == kinds.USER_DEFINED]
  )
  prefix = proto.normalizer_spec.add_dummy_prefix
  hf.normalizer = normalizers.Sequence(
    [normalizers.Prepend('▁')] * prefix + [normalizers.Replace(' ', '▁')]
  )
  hf.decoder = decoders.Sequence(
    [decoders.Replace('▁', ' '), decoders.ByteFallback(), decoders.Fuse()]
    + [decoders.Strip(' ', 1, 0)] * prefix
  )
  return hf


def _unigram_from_sentencepiece(proto) -> HFTokenizer:
  """A sentencepiece unigram model (T5) as transformers' SpmConverter builds it: the pieces and
  scores, the model's precompiled normalisation (NFKC for T5), extra spaces removed, spaces as
  "▁" and the dummy prefix (ids equal sentencepiece's own, tests/test_t5.py)."""
  spec, trainer = proto.normalizer_spec, proto.trainer_spec
  hf = HFTokenizer(
    models.Unigram(
      [(p.piece, p.score) for p in proto.pieces], trainer.unk_id, trainer.byte_fallback
    )
  )
  norm = [normalizers.Precompiled(spec.precompiled_charsmap)] * bool(spec.precompiled_charsmap)
  if spec.remove_extra_whitespaces:  # spaces only: sentencepiece leaves newlines alone
    norm += [normalizers.Replace(Regex(r'\A +| +\z'), ''), normalizers.Replace(Regex(' {2,}'), ' ')]
  norm += [normalizers.Replace(' ', '▁')] * spec.escape_whitespaces
  # Metaspace skips the dummy prefix when the text already starts with "▁"; sentencepiece does not
  norm += [normalizers.Replace(Regex(r'\A▁'), '▁▁')] * spec.add_dummy_prefix
  hf.normalizer = normalizers.Sequence(norm)
  if spec.add_dummy_prefix:
    hf.pre_tokenizer = pre_tokenizers.Metaspace('▁', prepend_scheme='always', split=False)
  kinds = proto.SentencePiece
  hf.add_special_tokens(
    [
      AddedToken(p.piece, normalized=False, special=True)
      for p in proto.pieces
      if p.type in (kinds.UNKNOWN, kinds.CONTROL)
    ]
  )
  hf.decoder = decoders.Sequence(
    [decoders.Replace('▁', ' ')]
    + [decoders.ByteFallback()] * trainer.byte_fallback
    + [decoders.Fuse(), decoders.Strip(' ', 1, 0)] * spec.add_dummy_prefix
  )
  return hf


def from_hf_files(path: str) -> Tokenizer:
  """Load ``tokenizer.json``, a sentencepiece ``tokenizer.model``, a BERT ``vocab.txt`` or
  GPT-2 ``vocab.json`` + ``merges.txt``.

  ``path`` is one of those files or a directory holding them (tokenizer.json wins, then
  tokenizer.model, then T5's spiece.model); an HF ``tokenizer_config.json`` beside them names the special tokens.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(
      f'Tokenizer path {path!r} does not exist: fix '
      '--config.tokenizer.path (a dir or tokenizer.json/vocab.txt).'
    )
  directory, name = (path, None) if os.path.isdir(path) else os.path.split(path)
  special = _special_tokens(directory)
  if name is None:
    name = next(
      (
        n
        for n in ('tokenizer.json', 'tokenizer.model', 'spiece.model', 'vocab.txt')
        if os.path.isfile(os.path.join(path, n))
      ),
      None,
    )
  if name is not None and name.endswith('.json') and name != 'vocab.json':
    return Tokenizer(HFTokenizer.from_file(os.path.join(directory, name)), special)
  if name is not None and name.endswith('.model'):
    return Tokenizer(_from_sentencepiece(os.path.join(directory, name)), special)
  if name is not None and name.endswith('.txt') and name != 'merges.txt':
    return Tokenizer(_wordpiece_from_vocab_txt(os.path.join(directory, name)))
  vocab, merges = os.path.join(directory, 'vocab.json'), os.path.join(directory, 'merges.txt')
  if os.path.isfile(vocab) and os.path.isfile(merges):
    return Tokenizer(_bpe_from_vocab_json(vocab, merges), special)
  raise FileNotFoundError(
    f'No tokenizer files at {path!r}: expected tokenizer.json, tokenizer.model (sentencepiece '
    'BPE), vocab.txt (WordPiece) or vocab.json + merges.txt (GPT-2 BPE).'
  )
