"""Tiny Hugging Face causal LMs with random weights, saved to tmp dirs (nothing is downloaded).

Shared by tests/ptq and tests/export through their conftest files."""
import pytest
import torch


def make_tiny_model(path, family: str = "llama", seed: int = 0):
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    torch.manual_seed(seed)
    common = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
    cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
           "mistral": (MistralConfig, MistralForCausalLM)}[family]
    model = cls[1](cls[0](**common))
    with torch.no_grad():  # heavier-tailed weights than the 0.02 init, so blocks differ in scale
        for name, p in model.named_parameters():
            if name.endswith("proj.weight"):
                p.mul_(torch.exp(torch.randn(p.shape[0], 1) * 0.7))
                p.view(-1)[torch.randint(0, p.numel(), (4,))] *= 8
    model.to(torch.bfloat16).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_factory():
    return make_tiny_model


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def calib_ids():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (4096,), generator=g)
