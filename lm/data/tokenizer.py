"""Thin wrapper over HF ``tokenizers``: one object exposing ids the batchers need.

The batchers insert special tokens themselves, so :meth:`Tokenizer.encode` never
adds any; the tokenizer.json still carries the usual post-processor so the saved
file behaves like a stock BERT/GPT-2 tokenizer in other tools.
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Optional

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

WORDPIECE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # [PAD] = 0
EOS, BPE_PAD = "<|endoftext|>", "<pad>"
BPE_SPECIALS = (EOS, BPE_PAD)
KINDS = ("wordpiece", "bpe")


class Tokenizer:
    """Kind-aware view of a ``tokenizers.Tokenizer``; unused special ids are None.

    WordPiece (BERT): pad/unk/cls/sep/mask ids. Byte-level BPE (GPT-2):
    ``<|endoftext|>`` is both bos and eos; pad is ``<pad>`` if the vocab has it,
    else eos (the usual GPT-2 convention, so stock GPT-2 files need no new token).
    """

    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        if isinstance(hf.model, models.WordPiece):
            self.kind = "wordpiece"
        elif isinstance(hf.model, models.BPE):
            self.kind = "bpe"
        else:
            raise ValueError(f"Unsupported tokenizer model {type(hf.model).__name__}: "
                             "use a WordPiece or BPE tokenizer.json.")
        tid = hf.token_to_id
        wp = self.kind == "wordpiece"
        self.pad_id = tid("[PAD]") if wp else (tid(BPE_PAD) if tid(BPE_PAD) is not None else tid(EOS))
        self.unk_id = tid("[UNK]") if wp else None
        self.cls_id = tid("[CLS]") if wp else None
        self.sep_id = tid("[SEP]") if wp else None
        self.mask_id = tid("[MASK]") if wp else None
        self.bos_id = self.eos_id = None if wp else tid(EOS)

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
        path = os.path.join(directory, "tokenizer.json")
        self.hf.save(path)
        return path

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        return from_hf_files(path)

    def __repr__(self):
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"


def _bert_pipeline(hf: HFTokenizer, lowercase: bool) -> HFTokenizer:
    hf.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.decoder = decoders.WordPiece(prefix="##")
    return hf


def _add_bert_post_processor(hf: HFTokenizer) -> HFTokenizer:
    cls_id, sep_id = hf.token_to_id("[CLS]"), hf.token_to_id("[SEP]")
    if cls_id is not None and sep_id is not None:
        hf.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return hf


def _gpt2_pipeline(hf: HFTokenizer) -> HFTokenizer:
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.post_processor = processors.ByteLevel(trim_offsets=False)
    return hf


def train_tokenizer(docs: list[str], kind: str, vocab_size: int) -> Tokenizer:
    """Train a BERT-style WordPiece or GPT-2-style byte-level BPE tokenizer on ``docs``."""
    if kind not in KINDS:
        raise ValueError(f"Unknown tokenizer kind {kind!r}: use one of {KINDS}.")
    if not docs:
        raise ValueError("Cannot train a tokenizer on an empty corpus: check the data config.")
    if kind == "wordpiece":
        hf = _bert_pipeline(HFTokenizer(models.WordPiece(unk_token="[UNK]")), lowercase=True)
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, show_progress=False,
                                            special_tokens=list(WORDPIECE_SPECIALS))
        minimum = len(WORDPIECE_SPECIALS) + 1
    else:
        hf = _gpt2_pipeline(HFTokenizer(models.BPE()))
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      special_tokens=list(BPE_SPECIALS), initial_alphabet=alphabet)
        minimum = len(BPE_SPECIALS) + len(alphabet)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size={vocab_size} is too small for a {kind} tokenizer: "
                         f"use at least {minimum}.")
    hf.train_from_iterator(docs, trainer=trainer)
    if kind == "wordpiece":
        _canonical_wordpiece_ids(hf)
        _add_bert_post_processor(hf)
    return Tokenizer(hf)


def _canonical_wordpiece_ids(hf: HFTokenizer) -> None:
    """The WordPiece trainer numbers its alphabet and equal-count merges in hash-map
    order, so two identical runs disagree on ids: renumber specials first, then the
    rest sorted. WordPiece segmentation depends only on the token set, not on ids."""
    vocab = hf.get_vocab(with_added_tokens=False)
    specials = [t for t in WORDPIECE_SPECIALS if t in vocab]
    order = specials + sorted(set(vocab) - set(specials))
    hf.model = models.WordPiece({t: i for i, t in enumerate(order)}, unk_token="[UNK]")


def _wordpiece_from_vocab_txt(path: str) -> HFTokenizer:
    # BERT vocab.txt has no casing flag: lowercase unless the vocab has uppercase words.
    with open(path, encoding="utf-8") as f:
        words = [w.strip() for w in f]
    cased = any(w[:1] != "[" and w != w.lower() for w in words)
    hf = HFTokenizer(models.WordPiece.from_file(path, unk_token="[UNK]"))
    hf.add_special_tokens([w for w in WORDPIECE_SPECIALS if w in words])
    return _add_bert_post_processor(_bert_pipeline(hf, lowercase=not cased))


def _bpe_from_vocab_json(vocab: str, merges: str) -> HFTokenizer:
    hf = _gpt2_pipeline(HFTokenizer(models.BPE.from_file(vocab, merges)))
    with open(vocab, encoding="utf-8") as f:
        present = json.load(f)
    hf.add_special_tokens([t for t in BPE_SPECIALS if t in present])
    return hf


def from_hf_files(path: str) -> Tokenizer:
    """Load ``tokenizer.json``, a BERT ``vocab.txt`` or GPT-2 ``vocab.json`` + ``merges.txt``.

    ``path`` is one of those files or a directory holding them (tokenizer.json wins).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"Tokenizer path {path!r} does not exist: fix "
                                "--config.tokenizer.path (a dir or tokenizer.json/vocab.txt).")
    directory = path
    if os.path.isfile(path):
        directory, name = os.path.split(path)
        if name.endswith(".json") and name != "vocab.json":
            return Tokenizer(HFTokenizer.from_file(path))
        if name.endswith(".txt") and name != "merges.txt":
            return Tokenizer(_wordpiece_from_vocab_txt(path))
    elif os.path.isfile(os.path.join(path, "tokenizer.json")):
        return Tokenizer(HFTokenizer.from_file(os.path.join(path, "tokenizer.json")))
    elif os.path.isfile(os.path.join(path, "vocab.txt")):
        return Tokenizer(_wordpiece_from_vocab_txt(os.path.join(path, "vocab.txt")))
    vocab, merges = os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")
    if os.path.isfile(vocab) and os.path.isfile(merges):
        return Tokenizer(_bpe_from_vocab_json(vocab, merges))
    raise FileNotFoundError(f"No tokenizer files at {path!r}: expected tokenizer.json, vocab.txt "
                            "(WordPiece) or vocab.json + merges.txt (GPT-2 BPE).")


def get_tokenizer(tok_cfg, docs: list[str], workdir: Optional[str]) -> Tokenizer:
    """Configured path > tokenizer saved in workdir (resume) > train on docs and save."""
    path = getattr(tok_cfg, "path", None)
    if path:
        return from_hf_files(path)
    saved = os.path.join(workdir, "tokenizer.json") if workdir else None
    if saved and os.path.isfile(saved):
        return from_hf_files(saved)
    tok = train_tokenizer(docs, getattr(tok_cfg, "kind", "wordpiece"),
                          int(getattr(tok_cfg, "vocab_size", 8192)))
    if workdir:
        tok.save(workdir)
    return tok
