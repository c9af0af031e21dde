"""Corpus preparation, tokenizers, deterministic batches, and the bundled tinyshakespeare corpus."""
from fp4lab.data.bundled import BUNDLED_CORPUS, default_data_dir
from fp4lab.data.loader import TokenData
from fp4lab.data.prepare import prepare_corpus, read_text
from fp4lab.data.tokenizer import ByteTokenizer, load_tokenizer, parse_tokenizer_spec

__all__ = [
    "BUNDLED_CORPUS",
    "ByteTokenizer",
    "TokenData",
    "default_data_dir",
    "load_tokenizer",
    "parse_tokenizer_spec",
    "prepare_corpus",
    "read_text",
]
