"""`fp4lab data prepare`: text files (plain or .xz) -> train.bin / val.bin token memmaps + meta.json.

Tokens are stored as little-endian uint16 when the vocabulary fits, else uint32. The last
``val_fraction`` of the token stream is the validation split (nanoGPT's shakespeare_char split).
"""
from __future__ import annotations

import hashlib
import json
import lzma
import os
from pathlib import Path

import numpy as np

from fp4lab.data.tokenizer import ByteTokenizer, parse_tokenizer_spec, train_bpe

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


def prepare_corpus(
    paths, out_dir, tokenizer: str = "byte", val_fraction: float = 0.1
) -> dict:
    """Tokenize ``paths`` (joined by a blank line) into ``out_dir``; returns the meta dict."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("data prepare needs at least one text file")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    kind, vocab = parse_tokenizer_spec(tokenizer)
    texts = []
    for p in paths:
        t = read_text(p)
        if not t.strip():
            raise ValueError(f"corpus file {p} is empty (no non-whitespace text)")
        texts.append(t)
    text = "\n\n".join(texts)

    if kind == "byte":
        tok = ByteTokenizer()
        ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    else:
        chunks = _chunks(text)
        tok = train_bpe(chunks, vocab)
        ids = np.fromiter(
            (i for piece in tok.encode_batch(chunks) for i in piece), dtype=np.int64
        )
    dtype = token_dtype(tok.vocab_size)
    ids = ids.astype(dtype)
    n_val = int(len(ids) * val_fraction)
    if n_val < 2 or len(ids) - n_val < 2:
        raise ValueError(f"corpus is too small to split: {len(ids)} tokens")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_tokens(out / "train.bin", ids[: len(ids) - n_val])
    _write_tokens(out / "val.bin", ids[len(ids) - n_val :])
    if kind == "bpe":
        tok.save(out)
    meta = {
        "format_version": FORMAT_VERSION,
        "tokenizer": kind,
        "vocab_size": tok.vocab_size,
        "dtype": dtype.name,
        "train_tokens": int(len(ids) - n_val),
        "val_tokens": int(n_val),
        "val_fraction": val_fraction,
        "sources": [
            {"path": str(p), "sha256": hashlib.sha256(t.encode("utf-8")).hexdigest()}
            for p, t in zip(paths, texts)
        ],
    }
    tmp = out / f"meta.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, out / "meta.json")  # written last: a directory with meta.json is complete
    return meta
