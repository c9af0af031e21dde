"""Sliding-window perplexity: every token after the first is scored once; text and token-id inputs."""
import lzma
import math

import torch
import torch.nn.functional as F

from fp4lab.export import load_quantized
from fp4lab.ptq.eval import load_tokens, perplexity


def _full_context_nll(model, ids):
    logits = model(ids.unsqueeze(0)).logits[0, :-1].float()
    return F.cross_entropy(logits, ids[1:], reduction="mean").item()


def test_sliding_window_matches_full_context_when_it_fits(tiny_llama):
    model = load_quantized(tiny_llama, dtype=torch.float32)
    ids = torch.randint(0, 256, (100,), generator=torch.Generator().manual_seed(0))
    r = perplexity(model, ids, ctx=128)
    assert r["tokens"] == 99
    assert math.isclose(r["nll"], _full_context_nll(model, ids), rel_tol=1e-5)


def test_strided_windows_score_each_token_once(tiny_llama):
    model = load_quantized(tiny_llama, dtype=torch.float32)
    ids = torch.randint(0, 256, (301,), generator=torch.Generator().manual_seed(1))
    for ctx, stride in [(64, 32), (64, 63), (50, 7)]:
        r = perplexity(model, ids, ctx=ctx, stride=stride)
        assert r["tokens"] == 300 and math.isfinite(r["ppl"])
        assert math.isclose(perplexity(model, ids, ctx=ctx, stride=stride, batch_size=1)["nll"], r["nll"],
                            rel_tol=1e-5)
    # stride == ctx: disjoint windows; a window cannot predict its own first token, so 3 tokens go unscored
    # and the result is the token-weighted mean of the chunks' own losses
    r = perplexity(model, ids, ctx=100, stride=100)
    chunks = [ids[i:i + 100] for i in range(0, 301, 100) if len(ids[i:i + 100]) > 1]
    total = sum(_full_context_nll(model, c) * (len(c) - 1) for c in chunks)
    assert r["tokens"] == 297 and math.isclose(r["nll"], total / 297, rel_tol=1e-5)


def test_text_with_byte_level_tokenizer(tiny_llama, tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())  # a byte-level BPE trained here on a toy text: every byte is a token
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["hello world " * 20], trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    text = "It was the best of times, it was the worst of times.\n" * 20
    (tmp_path / "t.txt.xz").write_bytes(lzma.compress(text.encode()))
    ids = load_tokens(tmp_path / "t.txt.xz", tokenizer=tmp_path / "tokenizer.json")
    assert ids.numel() > 100 and int(ids.max()) < 256
    torch.save(ids, tmp_path / "ids.pt")
    assert torch.equal(load_tokens(tmp_path / "ids.pt"), ids)
    assert math.isfinite(perplexity(load_quantized(tiny_llama), ids, ctx=64)["ppl"])


def test_byte_tokens_and_errors(tiny_llama, tmp_path):
    import pytest

    (tmp_path / "t.txt").write_text("héllo\n")
    expected = torch.tensor(list("héllo\n".encode()))
    assert torch.equal(load_tokens(tmp_path / "t.txt", tokenizer="byte"), expected)
    assert torch.equal(load_tokens(tmp_path / "t.txt", model_dir=tiny_llama), expected)  # vocab 256: bytes
    with pytest.raises(FileNotFoundError, match="no tokenizer found"):
        load_tokens(tmp_path / "t.txt", model_dir=tmp_path)
    with pytest.raises(ValueError, match="vocab_size"):
        perplexity(load_quantized(tiny_llama), torch.tensor([1, 2, 300]), ctx=8)
