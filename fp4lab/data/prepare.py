"""`fp4lab data prepare`: text files (plain or .xz) -> train.bin / val.bin token memmaps + meta.json.

Tokens are stored as little-endian uint16 when the vocabulary fits, else uint32. The last
``val_fraction`` of the token stream is the validation split (nanoGPT's shakespeare_char split),
unless separate validation files are given. The tokenizer is trained on the training text only.
"""
from __future__ import annotations

import hashlib
import json
import lzma
import os
from pathlib import Path

import numpy as np

from fp4lab.data.tokenizer import BPETokenizer, ByteTokenizer, parse_tokenizer_spec, train_bpe

FORMAT_VERSION = 1
# BPE encodes the corpus in pieces of about this many characters, cut at line ends
_CHUNK_CHARS = 1 << 20


def read_text(path: str | Path) -> str:
    """A UTF-8 text file, decompressed first if its name ends in .xz."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {path} does not exist")
    opener = lzma.open if path.suffix == ".xz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            return f.read()
    except UnicodeDecodeError as err:
        raise ValueError(f"corpus file {path} is not UTF-8 text: {err}") from None
    except lzma.LZMAError as err:
        raise ValueError(f"corpus file {path} is not a valid .xz file: {err}") from None


def _chunks(text: str) -> list[str]:
    pieces, start = [], 0
    while start < len(text):
        end = text.find("\n", start + _CHUNK_CHARS)
        end = len(text) if end < 0 else end + 1
        pieces.append(text[start:end])
        start = end
    return pieces


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def _write_tokens(path: Path, tokens: np.ndarray) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tokens.tofile(tmp)
    os.replace(tmp, path)


def _read_all(paths: list[Path]) -> list[str]:
    texts = []
    for p in paths:
        t = read_text(p)
        if not t.strip():
            raise ValueError(f"corpus file {p} is empty (no non-whitespace text)")
        texts.append(t)
    return texts


def _tokenizer(spec: str, train_chunks: list[str]):
    """'byte', 'bpe:VOCAB' (trained on the training text) or the path of a saved tokenizer.json."""
    if Path(spec).is_file():
        from tokenizers import Tokenizer

        try:
            return "bpe", BPETokenizer(Tokenizer.from_file(spec))
        except Exception as err:  # noqa: BLE001 - tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"tokenizer file {spec} is not a tokenizers JSON file: {err}") from None
    kind, vocab = parse_tokenizer_spec(spec)
    return kind, (ByteTokenizer() if kind == "byte" else train_bpe(train_chunks, vocab))


def _encode(tok, text: str) -> np.ndarray:
    if isinstance(tok, ByteTokenizer):
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    return np.fromiter((i for piece in tok.encode_batch(_chunks(text)) for i in piece), dtype=np.int64)


def prepare_corpus(
    paths, out_dir, tokenizer: str = "byte", val_fraction: float = 0.1, valid_paths=()
) -> dict:
    """Tokenize ``paths`` (joined by a blank line) into ``out_dir``; returns the meta dict.

    ``tokenizer``: 'byte', 'bpe:VOCAB' or a tokenizer.json to reuse. With ``valid_paths`` the
    validation split is those files and all of ``paths`` is training data.
    """
    paths = [Path(p) for p in paths]
    valid_paths = [Path(p) for p in valid_paths]
    if not paths:
        raise ValueError("data prepare needs at least one text file")
    if not valid_paths and not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    texts = _read_all(paths)
    valid_texts = _read_all(valid_paths)
    text = "\n\n".join(texts)
    kind, tok = _tokenizer(tokenizer, _chunks(text) if tokenizer.startswith("bpe:") else [])
    dtype = token_dtype(tok.vocab_size)
    ids = _encode(tok, text)
    if ids.size and int(ids.max()) >= tok.vocab_size:
        raise ValueError(f"tokenizer produced id {int(ids.max())} >= its vocab size {tok.vocab_size}")
    ids = ids.astype(dtype)
    if valid_paths:
        train_ids, val_ids = ids, _encode(tok, "\n\n".join(valid_texts)).astype(dtype)
    else:
        n_val = int(len(ids) * val_fraction)
        train_ids, val_ids = ids[: len(ids) - n_val], ids[len(ids) - n_val :]
    if len(val_ids) < 2 or len(train_ids) < 2:
        raise ValueError(f"corpus is too small to split: {len(train_ids)} train and {len(val_ids)} val tokens")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_tokens(out / "train.bin", train_ids)
    _write_tokens(out / "val.bin", val_ids)
    if kind == "bpe":
        tok.save(out)
    meta = {
        "format_version": FORMAT_VERSION,
        "tokenizer": kind,
        "vocab_size": tok.vocab_size,
        "dtype": dtype.name,
        "train_tokens": int(len(train_ids)),
        "val_tokens": int(len(val_ids)),
        "val_fraction": None if valid_paths else val_fraction,
        "sources": [
            {"path": str(p), "sha256": hashlib.sha256(t.encode("utf-8")).hexdigest()}
            for p, t in zip(paths, texts)
        ],
        "valid_sources": [
            {"path": str(p), "sha256": hashlib.sha256(t.encode("utf-8")).hexdigest()}
            for p, t in zip(valid_paths, valid_texts)
        ],
    }
    tmp = out / f"meta.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, out / "meta.json")  # written last: a directory with meta.json is complete
    return meta
