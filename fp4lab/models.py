"""Hugging Face Llama presets, so every model fp4lab trains is a standard `save_pretrained` checkpoint.

Sizes (non-embedding parameters; the embedding adds vocab x hidden, tied with the output layer):
``tiny`` ~0.8M for CPU smoke runs; ``shakespeare-char`` 6 layers / 6 heads / 384 wide / context 256,
the size of nanoGPT's baby GPT (10.65M incl. embeddings) with a SwiGLU width of 1024 so the MLP has
as many weights as nanoGPT's 4x GELU MLP; ``20m``, ``60m`` (study B's size), ``124m`` (GPT-2 small's shape) and ``350m``
(GPT-2 medium's shape) likewise; ``135m`` is SmolLM-135M's shape (the speed benchmark's model).
Every width is a multiple of 16 so NVFP4 blocks tile it exactly.
"""
from __future__ import annotations

import json
from pathlib import Path

# model shape + the training defaults that suit it (overridable on the command line)
PRESETS: dict[str, dict] = {
    "tiny": dict(
        model=dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128),
        # the README's main command: bf16 + emulated nvfp4 on 2 CPU cores in under 5 minutes
        train=dict(seq_len=128, batch_size=8, lr=3e-3, tokens=64_000, eval_batches=2),
    ),
    "shakespeare-char": dict(
        model=dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
                   num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=256),
        # nanoGPT's config/train_shakespeare_char.py: dropout 0.2, beta2 0.99
        train=dict(seq_len=256, batch_size=64, lr=1e-3, tokens=80_000_000, dropout=0.2, beta2=0.99),
    ),
    "20m": dict(
        model=dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=6,
                   num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512),
        train=dict(seq_len=512, batch_size=32, lr=1e-3, tokens=400_000_000),
    ),
    "60m": dict(  # study B: 49.6M non-embedding (+10.5M embedding at vocab 16384)
        model=dict(hidden_size=640, intermediate_size=1728, num_hidden_layers=10,
                   num_attention_heads=10, num_key_value_heads=10, max_position_embeddings=1024),
        train=dict(seq_len=1024, batch_size=32, lr=1e-3, tokens=1_200_000_000),
    ),
    "124m": dict(
        model=dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                   num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=1024),
        train=dict(seq_len=1024, batch_size=32, lr=6e-4, tokens=2_500_000_000),
    ),
    "135m": dict(
        model=dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                   num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048),
        train=dict(seq_len=1024, batch_size=32, lr=6e-4, tokens=2_700_000_000),
    ),
    "350m": dict(
        model=dict(hidden_size=1024, intermediate_size=2736, num_hidden_layers=24,
                   num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=1024),
        train=dict(seq_len=1024, batch_size=32, lr=3e-4, tokens=7_000_000_000),
    ),
}

# fixed for every preset: no biases, tied embeddings; dropout is a training setting (add_dropout)
_COMMON = dict(rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
               attention_bias=False, mlp_bias=False, attention_dropout=0.0, hidden_act="silu",
               initializer_range=0.02)


def preset_names() -> list[str]:
    return sorted(PRESETS)


def preset_train_defaults(preset: str) -> dict:
    """Training defaults (seq_len, batch_size, lr, tokens) for a preset; {} for a config file."""
    return dict(PRESETS[preset]["train"]) if preset in PRESETS else {}


def model_config(preset: str, vocab_size: int):
    """LlamaConfig for a preset name or a JSON config file (a HF config.json or plain kwargs)."""
    from transformers import LlamaConfig

    if preset in PRESETS:
        kwargs = {**_COMMON, **PRESETS[preset]["model"]}
    elif Path(preset).is_file():
        try:
            kwargs = json.loads(Path(preset).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"model config file {preset} is not valid JSON: {err}") from None
        kwargs = {**_COMMON, **{k: v for k, v in kwargs.items() if k not in ("architectures", "model_type")}}
    else:
        raise ValueError(
            f"unknown preset {preset!r}: use one of {', '.join(preset_names())} or a JSON config file"
        )
    kwargs["vocab_size"] = int(vocab_size)
    return LlamaConfig(**kwargs)


def build_model(preset: str, vocab_size: int, seed: int):
    """A freshly initialised LlamaForCausalLM in FP32; the weights depend only on (preset, vocab, seed)."""
    import torch
    from transformers import LlamaForCausalLM

    config = model_config(preset, vocab_size)
    devices = []  # fork_rng on CPU only: init is done on CPU, then moved
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def add_dropout(model, p: float) -> None:
    """nanoGPT's dropout placement on a HF Llama: after the embedding, on the attention weights and
    on each block's attention and MLP outputs before the residual add (active in train() only).

    Forward hooks on the embedding, attention and MLP modules (not on the Linear layers, which
    `fp4lab.nn.convert` replaces), so a recipe conversion keeps them.
    """
    import torch.nn.functional as F

    if p <= 0.0:
        return
    model.config.attention_dropout = p
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = p

    def hook(module, args, output):
        if isinstance(output, tuple):  # attention returns (output, weights)
            return (F.dropout(output[0], p, module.training), *output[1:])
        return F.dropout(output, p, module.training)

    model.model.embed_tokens.register_forward_hook(hook)
    for layer in model.model.layers:
        layer.self_attn.register_forward_hook(hook)
        layer.mlp.register_forward_hook(hook)


def count_parameters(model, non_embedding: bool = True) -> int:
    n = sum(p.numel() for p in model.parameters())
    if non_embedding:
        n -= model.get_input_embeddings().weight.numel()
    return n
