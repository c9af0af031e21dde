"""Perplexity with a strided sliding window (Hugging Face, "Perplexity of fixed-length models").

Windows of `ctx` tokens advance by `stride`; each window scores only the tokens not scored by an
earlier window, so every token after the first is predicted once, with up to ctx-1 tokens of context.
ppl = exp(sum of negative log-likelihoods / number of scored tokens).
"""
from __future__ import annotations

import lzma
import math
from pathlib import Path

import torch
import torch.nn.functional as F


def read_text(path: str | Path, max_bytes: int | None = None) -> str:
    """UTF-8 text of a plain or .xz file (only the first `max_bytes` bytes when given)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with (lzma.open(path) if path.suffix == ".xz" else open(path, "rb")) as f:
        raw = f.read(-1 if max_bytes is None else max_bytes)
    # a cut may split a multi-byte character: drop the partial tail only
    return raw.decode("utf-8", errors="ignore" if max_bytes is not None else "strict")


def _byte_tokenizer(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def load_tokenizer(model_dir: str | Path | None, tokenizer: str | Path | None = None):
    """A callable text -> list of ids.

    `tokenizer`: "byte" (raw UTF-8 bytes, fp4lab's byte tokenizer), a tokenizer.json, or a transformers
    tokenizer directory; else the model directory's tokenizer; else bytes if the model's vocab is 256.
    """
    if str(tokenizer) == "byte":
        return _byte_tokenizer
    for cand in [tokenizer, model_dir]:
        if cand is None:
            continue
        cand = Path(cand)
        file = cand if cand.is_file() else cand / "tokenizer.json"
        if file.is_file():
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(file))
            return lambda text: tok.encode(text).ids
        if cand.is_dir() and any((cand / f).is_file() for f in ("tokenizer_config.json", "vocab.json")):
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(cand)
            return lambda text: tok(text, add_special_tokens=False)["input_ids"]
    if tokenizer is None and model_dir is not None and (Path(model_dir) / "config.json").is_file():
        import json

        if json.loads((Path(model_dir) / "config.json").read_text()).get("vocab_size") == 256:
            return _byte_tokenizer  # fp4lab's byte-level models (`fp4lab data prepare --tokenizer byte`)
    raise FileNotFoundError(
        f"no tokenizer found in {model_dir} (tokenizer.json or a transformers tokenizer); pass --tokenizer "
        f"(a file, a directory or 'byte'), or give token ids (.pt / .npy)")


def load_tokens(path: str | Path, model_dir=None, tokenizer=None, max_tokens: int | None = None) -> torch.Tensor:
    """1-D LongTensor of token ids from a .pt/.npy file of ids, or a text file (.xz allowed) tokenized."""
    path = Path(path)
    if path.suffix in (".pt", ".pth"):
        ids = torch.as_tensor(torch.load(path, weights_only=True))
    elif path.suffix == ".npy":
        import numpy as np

        ids = torch.from_numpy(np.load(path).astype("int64"))
    else:
        # no tokenizer yields more than 16 bytes per token on natural text, so 16 bytes/token is enough
        text = read_text(path, None if max_tokens is None else max_tokens * 16)
        ids = torch.tensor(load_tokenizer(model_dir, tokenizer)(text), dtype=torch.long)
    ids = ids.long().flatten()
    return ids[:max_tokens] if max_tokens else ids


def windows(n: int, ctx: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, scored) of each window over n tokens: the last `scored` targets of window begin:end."""
    out, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + ctx, n)
        out.append((begin, end, end - max(prev_end, begin + 1)))  # a window never scores its first token
        prev_end = end
        if end == n:
            break
    return out


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, ctx: int, stride: int | None = None, device=None,
               batch_size: int = 8) -> dict:
    """{"ppl", "nll", "tokens", "ctx", "stride"} of `model` on the token stream `ids`.

    Windows of equal length run `batch_size` at a time (the result does not depend on it)."""
    stride = stride or ctx // 2
    if not 0 < stride <= ctx:
        raise ValueError(f"need 0 < stride <= ctx, got stride={stride}, ctx={ctx}")
    ids = torch.as_tensor(ids).long().flatten()
    if ids.numel() < 2:
        raise ValueError(f"need at least 2 tokens to measure perplexity, got {ids.numel()}")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and int(ids.max()) >= vocab:
        raise ValueError(f"token id {int(ids.max())} >= the model's vocab_size {vocab} (wrong tokenizer?)")
    device = device or next(model.parameters()).device
    nll, count = 0.0, 0
    wins = windows(ids.numel(), ctx, stride)
    i = 0
    while i < len(wins):
        length = wins[i][1] - wins[i][0]
        group = [wins[i]]  # consecutive windows of the same length (all but the last one or two)
        while len(group) < batch_size and i + len(group) < len(wins) and \
                wins[i + len(group)][1] - wins[i + len(group)][0] == length:
            group.append(wins[i + len(group)])
        batch = torch.stack([ids[b:e] for b, e, _ in group]).to(device)
        logits = model(batch).logits[:, :-1].float()
        for row, (_, _, new) in enumerate(group):
            if new > 0:
                nll += float(F.cross_entropy(logits[row, -new:], batch[row, 1:][-new:], reduction="sum"))
                count += new
        i += len(group)
    return {"ppl": math.exp(nll / count), "nll": nll / count, "tokens": count, "ctx": ctx, "stride": stride}
