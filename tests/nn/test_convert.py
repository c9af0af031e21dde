"""convert / set_recipe / describe on a toy model and a tiny Hugging Face Llama (built from a config, no download)."""
import warnings

import pytest
import torch
import torch.nn as nn

import fp4lab
from fp4lab.nn import QuantLinear, convert, describe, find_blocks, layer_rows, quant_linears, set_recipe


def tiny_llama(n_layers=4, hidden=32, inter=64, tie=False):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=n_layers,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32, tie_word_embeddings=tie,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def bf16_blocks(model):
    return sorted({m.block_index for m in quant_linears(model) if not m.plan.quantized})


def test_hf_llama_conversion_keeps_head_embeddings_and_state_dict():
    model = tiny_llama()
    keys = set(model.state_dict())
    ids = torch.randint(0, 64, (2, 16))
    ref = model(ids).logits
    fp4lab.convert(model, "nvfp4")
    assert set(model.state_dict()) == keys
    assert type(model.lm_head) is nn.Linear and isinstance(model.model.embed_tokens, nn.Embedding)
    assert find_blocks(model) == [f"model.layers.{i}" for i in range(4)]
    layers = quant_linears(model)
    assert len(layers) == 4 * 7  # q, k, v, o, gate, up, down per block
    assert bf16_blocks(model) == [3]  # ceil(0.15 * 4) = 1 last block
    out = model(ids).logits
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert 0 < (out - ref).abs().max() < 0.5 * ref.abs().max()
    out.float().logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_tied_head_is_never_converted():
    model = tiny_llama(n_layers=2, tie=True)
    convert(model, "nvfp4:bf16_layers=none")
    assert type(model.lm_head) is nn.Linear
    assert "LM head" in describe(model) or "tied" in describe(model)


@pytest.mark.parametrize("sel,expected", [
    ("none", []), ("last:2", [4, 5]), ("first:1", [0]), ("first:1+last:1", [0, 5]), ("0.15", [5]),
    ("0.5", [3, 4, 5]), ("last:99", [0, 1, 2, 3, 4, 5]),
])
def test_bf16_layer_selection(sel, expected):
    model = tiny_llama(n_layers=6)
    convert(model, f"nvfp4:bf16_layers={sel}")
    assert bf16_blocks(model) == expected


def test_regex_selection_and_block_less_model():
    model = tiny_llama(n_layers=2)
    convert(model, "nvfp4:bf16_layers=re:mlp\\.down_proj")
    kept = [m.name for m in quant_linears(model) if not m.plan.quantized]
    assert kept == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    seq = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.Linear(32, 16))
    convert(seq, "nvfp4:bf16_layers=last:1")
    assert [m.plan.quantized for m in quant_linears(seq)] == [True, True, False]


def test_set_recipe_forward_only_switch():
    model = tiny_llama(n_layers=2)
    convert(model, "nvfp4:bf16_layers=none")
    set_recipe(model, "bf16", forward_only=True)
    for m in quant_linears(model):
        assert m.plan.fprop_x is None and m.plan.fprop_w is None
        assert m.plan.dgrad_dy is not None and m.plan.dgrad_dy.stochastic and m.plan.wgrad_x.rht
    rows = layer_rows(model)
    assert all(r["fprop"] == "bf16" and "RHT" in r["wgrad"] and r["format"] == "bf16/nvfp4"
               for r in rows if r["name"] != "lm_head")
    ids = torch.randint(0, 64, (1, 16))
    model(ids).logits.sum().backward()
    set_recipe(model, "nvfp4:bf16_layers=none")
    assert all(m.plan.fprop_x is not None for m in quant_linears(model))
    set_recipe(model, "bf16")
    assert not any(m.plan.quantized for m in quant_linears(model))


def test_describe_lists_every_linear():
    model = tiny_llama(n_layers=2)
    convert(model, "nvfp4")
    text = describe(model)
    assert "lm_head" in text and "model.layers.0.self_attn.q_proj" in text
    assert "16x16" in text and "RHT" in text and "SR" in text and "bf16_layers=0.15" in text
    assert "7 of 15 linear layers quantized" in text  # block 1 of 2 and lm_head stay BF16
    assert len(layer_rows(model)) == 15


def test_no_linear_layers_is_a_clear_error():
    with pytest.raises(ValueError, match="no nn.Linear layers"):
        convert(nn.Sequential(nn.Conv1d(2, 2, 1), nn.ReLU()), "nvfp4")
    with pytest.raises(ValueError, match="no QuantLinear"):
        set_recipe(nn.Sequential(nn.Linear(16, 16)), "nvfp4")
    with pytest.raises(ValueError, match="unknown recipe key"):
        convert(nn.Sequential(nn.Linear(16, 16)), "nvfp4:foo=1")
    with pytest.raises(TypeError, match="nn.Module"):
        convert("model", "nvfp4")


def test_odd_in_features_warns_once_and_stays_bf16():
    model = nn.Sequential(nn.Linear(20, 32), nn.Linear(32, 32), nn.Linear(32, 8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert(model, "nvfp4:bf16_layers=none")
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and "2 layer(s) kept in BF16" in msgs[0] and "20x32" in msgs[0], msgs
    assert [m.plan.quantized for m in quant_linears(model)] == [False, True, False]


def test_optimizer_keeps_working_after_convert():
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w0 = model[0].weight
    convert(model, "nvfp4:bf16_layers=none")
    assert model[0].weight is w0 and isinstance(model[0], QuantLinear)
    before = w0.detach().clone()
    model(torch.randn(16, 32)).square().mean().backward()
    opt.step()
    assert not torch.equal(before, model[0].weight)
