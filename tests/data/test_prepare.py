"""fp4lab.data: text -> tokens -> text round trips, clear errors, deterministic batches."""
import hashlib
import json
import lzma

import numpy as np
import pytest
import torch

from fp4lab.data import (BUNDLED_CORPUS, TokenData, load_tokenizer, parse_tokenizer_spec,
                         prepare_corpus, read_text)
from fp4lab.data.bundled import BUNDLED_SHA256

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
        "Ünïcödé — ✓ and tabs\tand  double  spaces.\n") * 40


def _decode_all(out):
    tok = load_tokenizer(out)
    meta = json.loads((out / "meta.json").read_text())
    ids = np.concatenate([np.fromfile(out / f"{s}.bin", dtype=meta["dtype"]) for s in ("train", "val")])
    return tok.decode(ids.tolist()), meta


@pytest.mark.parametrize("tokenizer", ["byte", "bpe:300"])
def test_round_trip_plain_and_xz(tmp_path, tokenizer):
    plain = tmp_path / "a.txt"
    plain.write_text(TEXT, encoding="utf-8")
    packed = tmp_path / "b.txt.xz"
    packed.write_bytes(lzma.compress("Second file.\n".encode() * 30))
    out = tmp_path / "prepared"
    meta = prepare_corpus([plain, packed], out, tokenizer=tokenizer)
    text, meta_on_disk = _decode_all(out)
    assert text == TEXT + "\n\n" + "Second file.\n" * 30
    assert meta == meta_on_disk
    assert meta["dtype"] == "uint16"
    assert meta["sources"][0]["sha256"] == hashlib.sha256(TEXT.encode()).hexdigest()
    if tokenizer.startswith("bpe"):
        assert (out / "tokenizer.json").is_file()
        assert meta["vocab_size"] <= 300
        # BPE actually merged something: fewer tokens than bytes
        assert meta["train_tokens"] + meta["val_tokens"] < len(text.encode())
    else:
        assert meta["train_tokens"] + meta["val_tokens"] == len(text.encode())


def test_bundled_corpus_is_the_recorded_file():
    assert hashlib.sha256(read_text(BUNDLED_CORPUS).encode()).hexdigest() == BUNDLED_SHA256


def test_missing_corpus(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_corpus([tmp_path / "nope.txt"], tmp_path / "out")


@pytest.mark.parametrize("content", ["", "  \n\n\t "])
def test_empty_corpus(tmp_path, content):
    f = tmp_path / "empty.txt"
    f.write_text(content)
    with pytest.raises(ValueError, match="is empty"):
        prepare_corpus([f], tmp_path / "out")
    assert not (tmp_path / "out" / "meta.json").exists()


def test_not_utf8_and_bad_xz(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        prepare_corpus([f], tmp_path / "out")
    g = tmp_path / "broken.xz"
    g.write_bytes(b"not xz at all")
    with pytest.raises(ValueError, match="not a valid .xz"):
        prepare_corpus([g], tmp_path / "out")


@pytest.mark.parametrize("spec", ["bpe", "bpe:12", "wordpiece:100", "bpe:abc"])
def test_bad_tokenizer_spec(spec):
    with pytest.raises(ValueError, match="byte"):
        parse_tokenizer_spec(spec)


def test_cli_prepare_errors(tmp_path, capsys):
    from fp4lab.cli import main

    assert main(["data", "prepare", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_batches_are_deterministic_and_split_by_rows(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text(TEXT)
    prepare_corpus([f], tmp_path / "d")
    data = TokenData(tmp_path / "d")
    x, y = data.batch("train", seed=3, step=7, rows=slice(0, 4), global_batch=4, seq_len=16)
    x2, _ = data.batch("train", seed=3, step=7, rows=slice(0, 4), global_batch=4, seq_len=16)
    assert x.equal(x2) and x.shape == (4, 16) and x[:, 1:].equal(y[:, :-1])
    # two ranks' halves are exactly the rows of the one-process batch
    lo, _ = data.batch("train", 3, 7, slice(0, 2), 4, 16)
    hi, _ = data.batch("train", 3, 7, slice(2, 4), 4, 16)
    assert x.equal(torch.cat([lo, hi]))
    other, _ = data.batch("train", seed=4, step=7, rows=slice(0, 4), global_batch=4, seq_len=16)
    assert not x.equal(other)


def test_truncated_token_file_is_refused(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text(TEXT)
    prepare_corpus([f], tmp_path / "d")
    raw = (tmp_path / "d" / "train.bin").read_bytes()
    (tmp_path / "d" / "train.bin").write_bytes(raw[:-10])
    with pytest.raises(ValueError, match="wrong size"):
        TokenData(tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="data prepare"):
        TokenData(tmp_path)


def test_validation_files_and_a_reused_tokenizer(tmp_path):
    train_txt, valid_txt = tmp_path / "train.txt", tmp_path / "valid.txt.xz"
    train_txt.write_text(TEXT, encoding="utf-8")
    valid_txt.write_bytes(lzma.compress("Speak, speak. A different book.\n".encode() * 20))
    first = prepare_corpus([train_txt], tmp_path / "a", tokenizer="bpe:300", valid_paths=[valid_txt])
    assert first["val_fraction"] is None and len(first["valid_sources"]) == 1
    tok = load_tokenizer(tmp_path / "a")
    train_ids = np.fromfile(tmp_path / "a" / "train.bin", dtype=first["dtype"])
    val_ids = np.fromfile(tmp_path / "a" / "val.bin", dtype=first["dtype"])
    assert tok.decode(train_ids.tolist()) == TEXT  # all of it is training data
    assert tok.decode(val_ids.tolist()) == "Speak, speak. A different book.\n" * 20
    # the same tokenizer.json reused on other text: identical ids, no retraining
    again = prepare_corpus([train_txt], tmp_path / "b", tokenizer=str(tmp_path / "a" / "tokenizer.json"),
                           valid_paths=[valid_txt])
    assert again["vocab_size"] == first["vocab_size"]
    assert np.array_equal(np.fromfile(tmp_path / "b" / "val.bin", dtype=again["dtype"]), val_ids)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="tokenizers JSON"):
        prepare_corpus([train_txt], tmp_path / "c", tokenizer=str(bad))
