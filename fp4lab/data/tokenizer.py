"""Tokenizers for `fp4lab data prepare`: raw UTF-8 bytes (vocab 256) or a byte-level BPE.

Both round-trip exactly: ``decode(encode(text)) == text`` for any valid UTF-8 text.
"""
from __future__ import annotations

import json
from pathlib import Path

BPE_FILE = "tokenizer.json"
END_OF_TEXT = "<|endoftext|>"


class ByteTokenizer:
    """One token per UTF-8 byte; with ASCII text (tinyshakespeare) that is one token per character."""

    vocab_size = 256
    name = "byte"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="strict")


class BPETokenizer:
    """A trained ``tokenizers`` byte-level BPE; saved as tokenizer.json next to the token files."""

    name = "bpe"

    def __init__(self, tok):
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts)]

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, directory: Path) -> None:
        self.tok.save(str(Path(directory) / BPE_FILE))


def parse_tokenizer_spec(spec: str) -> tuple[str, int]:
    """'byte' -> ('byte', 256); 'bpe:8192' -> ('bpe', 8192)."""
    if spec == "byte":
        return "byte", 256
    kind, _, vocab = spec.partition(":")
    if kind == "bpe" and vocab.isdigit() and int(vocab) > 256:
        return "bpe", int(vocab)
    raise ValueError(f"tokenizer {spec!r} is not 'byte' or 'bpe:VOCAB' with VOCAB > 256 (e.g. bpe:8192)")


def train_bpe(texts, vocab_size: int) -> BPETokenizer:
    """Byte-level BPE (GPT-2 style pre-tokenization, every byte in the initial alphabet)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(tok)


def load_tokenizer(data_dir: str | Path):
    """The tokenizer a prepared data directory was made with (reads meta.json)."""
    data_dir = Path(data_dir)
    meta = json.loads((data_dir / "meta.json").read_text())
    if meta["tokenizer"] == "byte":
        return ByteTokenizer()
    from tokenizers import Tokenizer

    path = data_dir / BPE_FILE
    if not path.exists():
        raise FileNotFoundError(f"{data_dir} says tokenizer 'bpe' but has no {BPE_FILE}")
    return BPETokenizer(Tokenizer.from_file(str(path)))
