"""NVFP4Linear: reference numerics, state_dict round trip, inside a Hugging Face Llama, CUDA graphs."""
import pytest
import torch
import torch.nn as nn

from fp4lab.formats.nvfp4 import quantize_nvfp4
from fp4lab.nn.nvfp4_linear import NVFP4Linear, quantize_linears_to_nvfp4

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _layer(n, k, seed, bias=False, scale_order="torchao"):
    gen = torch.Generator().manual_seed(seed)
    t = quantize_nvfp4(torch.randn(n, k, generator=gen), scale_order=scale_order)
    b = torch.randn(n, generator=gen).bfloat16() if bias else None
    return t, b, gen


@pytest.mark.parametrize("scale_order", ["torchao", "te", "compressed-tensors"])
def test_forward_matches_dequantized_linear(scale_order):
    t, b, gen = _layer(48, 40, 0, bias=True, scale_order=scale_order)  # K = 40: padded to 48 inside
    layer = NVFP4Linear.from_nvfp4(t, b).to(DEV)
    x = torch.randn(2, 5, 40, generator=gen).bfloat16()
    y = layer(x.to(DEV)).cpu()
    ref = x.double() @ t.dequantize(torch.float64).T + b.double()
    assert y.shape == (2, 5, 48) and y.dtype == torch.bfloat16
    # weight rounded to BF16 on the CPU path (2^-9 each) and output rounding (2^-8)
    bound = x.double().abs() @ t.dequantize(torch.float64).abs().T
    assert ((y.double() - ref).abs() <= 2 ** -8 * ref.abs() + 2 ** -8 * bound).all()
    if scale_order == "torchao":  # same op order as the reference: bit-exact
        assert torch.equal(layer.dequantize().cpu(), t.dequantize(torch.bfloat16))


def test_state_dict_round_trip():
    t, b, gen = _layer(32, 64, 1, bias=True, scale_order="te")
    layer = NVFP4Linear.from_nvfp4(t, b)
    sd = layer.state_dict()
    assert sd["weight_packed"].dtype == torch.uint8 and tuple(sd["weight_packed"].shape) == (32, 32)
    assert sd["weight_scale"].dtype == torch.float8_e4m3fn and tuple(sd["weight_scale"].shape) == (32, 4)
    assert sd["weight_global_scale"].dtype == torch.float32
    fresh = NVFP4Linear(64, 32, bias=True)
    fresh.load_state_dict(sd)
    assert fresh.scale_order == "te"
    x = torch.randn(3, 64, generator=gen).bfloat16()
    assert torch.equal(fresh(x), layer(x))
    back = fresh.to_nvfp4()
    assert torch.equal(back.dequantize(torch.float32), t.dequantize(torch.float32))


def test_bad_input_raises():
    t, _, _ = _layer(32, 64, 2)
    with pytest.raises(ValueError, match="bias"):
        NVFP4Linear.from_nvfp4(t, torch.zeros(31))
    layer = NVFP4Linear.from_nvfp4(t)
    with pytest.raises(ValueError, match="in_features"):
        layer(torch.randn(2, 63))
    with pytest.raises(ValueError, match="in_features"):
        NVFP4Linear(48, 32).load_state_dict(layer.state_dict(), strict=False)
    t3 = quantize_nvfp4(torch.randn(2, 4, 16))
    with pytest.raises(ValueError, match="2-D"):
        NVFP4Linear.from_nvfp4(t3)


def _tiny_llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).to(torch.bfloat16).eval()


def test_inside_hf_llama_matches_dequantized_model():
    model = _tiny_llama()
    quantize_linears_to_nvfp4(model)
    n_fp4 = sum(isinstance(m, NVFP4Linear) for m in model.modules())
    assert n_fp4 == 2 * 7 and isinstance(model.lm_head, nn.Linear)
    dense = _tiny_llama()
    # the same weights, dequantized to BF16 in ordinary nn.Linear layers
    for name, mod in model.named_modules():
        if isinstance(mod, NVFP4Linear):
            dense.get_submodule(name).weight.data.copy_(mod.dequantize())
    model.to(DEV)
    dense.to(DEV)
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1)).to(DEV)
    with torch.no_grad():
        a = model(ids).logits.float()
        b = dense(ids).logits.float()
    # CPU: the same computation; GPU: fp32-accumulated kernel vs cuBLAS BF16, rounding differences only
    tol = 1e-6 if DEV == "cpu" else 3e-2
    assert (a - b).abs().max() <= tol * max(1.0, b.abs().max()), (a - b).abs().max()


@pytest.mark.gpu
def test_gpu_forward_large_and_cuda_graph():
    t, b, gen = _layer(4096, 4096, 3, bias=True)
    layer = NVFP4Linear.from_nvfp4(t.to("cuda"), b.cuda())
    w = t.dequantize(torch.float32).cuda()
    for m in (1, 7, 64, 512):
        x = torch.randn(m, 4096, generator=gen).bfloat16().cuda()
        ref = x.double() @ w.double().T + b.double().cuda()
        bound = x.double().abs() @ w.double().abs().T
        y = layer(x)
        assert ((y.double() - ref).abs() <= 2 ** -8 * ref.abs() + 4096 * 2 ** -24 * bound).all()
    for m in (1, 16):
        static_x = torch.randn(m, 4096, generator=gen).bfloat16().cuda()
        layer(static_x)  # warm up: tunes and compiles outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = layer(static_x)
        for _ in range(3):
            static_x.copy_(torch.randn(m, 4096, generator=gen).bfloat16())
            graph.replay()
            torch.cuda.synchronize()
            eager = layer(static_x).float()
            # split-K adds its fp32 partials atomically, in any order: both results are within the fp32
            # summation bound of the exact sum, then rounded to BF16 (a relative bound alone fails where
            # the sum cancels to near 0)
            bound = (static_x.double().abs() @ w.double().abs().T).float()
            assert ((static_y.float() - eager).abs() <= 2 ** -7 * eager.abs() + 2 * 4096 * 2 ** -24 * bound).all()


@pytest.mark.gpu
def test_gpu_hf_llama_generate_under_graph_safe_path():
    model = quantize_linears_to_nvfp4(_tiny_llama()).cuda()
    ids = torch.randint(0, 128, (1, 8), device="cuda")
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 12)


def test_compiles_as_one_opaque_op_and_recompiles_for_new_lengths():
    # under torch.compile the product is the custom op fp4lab::nvfp4_linear: Dynamo traces neither the
    # kernel nor the dispatcher's tuning (a prefill then decode changes M and recompiles)
    t, b, gen = _layer(48, 40, 3, bias=True)
    layer = NVFP4Linear.from_nvfp4(t, b)
    x = torch.randn(3, 40, generator=gen).bfloat16()
    torch.library.opcheck(torch.ops.fp4lab.nvfp4_linear.default,
                          (x, layer.weight_words, layer.weight_scale_t, layer.weight_global_scale, layer.bias, 40))
    torch._dynamo.reset()
    model = nn.Sequential(layer, nn.GELU(), NVFP4Linear.from_nvfp4(quantize_nvfp4(torch.randn(16, 48, generator=gen))))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    for m in (7, 1, 2):  # a prompt, then single tokens
        x = torch.randn(m, 40, generator=gen).bfloat16()
        assert torch.equal(compiled(x), model(x)), m


@pytest.mark.gpu
def test_gpu_inductor_compile_prefill_then_decode():
    gen = torch.Generator().manual_seed(9)
    model = nn.Sequential(NVFP4Linear.from_nvfp4(quantize_nvfp4(torch.randn(1024, 512, generator=gen))), nn.SiLU(),
                          NVFP4Linear.from_nvfp4(quantize_nvfp4(torch.randn(512, 1024, generator=gen)))).cuda()
    torch._dynamo.reset()
    compiled = torch.compile(model)
    for m in (37, 1, 1, 4):
        x = torch.randn(m, 512, generator=gen).bfloat16().cuda()
        a, b = compiled(x).float(), model(x).float()  # same kernel and config; split-K may add in another order
        assert (a - b).abs().max() <= 1e-2 * b.abs().max(), m
