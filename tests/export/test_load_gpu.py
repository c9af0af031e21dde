"""On CUDA, load_quantized runs NVFP4 layers through NVFP4Linear (the W4A16 kernel)."""
import pytest
import torch

from fp4lab.export import load_quantized
from fp4lab.ptq.quantize import PTQConfig, quantize_dir


@pytest.mark.gpu
@pytest.mark.parametrize("scheme", ["nvfp4a16", "nvfp4"])
def test_cuda_load_uses_the_kernel_and_matches_the_dense_path(tiny_llama, calib_ids, tmp_path, scheme):
    pytest.importorskip("fp4lab.nn.nvfp4_linear")
    out = quantize_dir(tiny_llama, tmp_path, PTQConfig(scheme=scheme, calib_samples=4, calib_len=32),
                       calib_ids=calib_ids)
    kern = load_quantized(out, device="cuda")
    dense = load_quantized(out, device="cuda", use_kernel=False)
    assert type(kern.model.layers[0].mlp.up_proj).__name__ == "NVFP4Linear"
    x = torch.randint(0, 256, (2, 40), device="cuda")
    if scheme == "nvfp4a16":
        a, b = kern(x).logits.float(), dense(x).logits.float()
        # BF16 GEMMs with different accumulation orders: equal to BF16 rounding, not bit for bit
        assert torch.allclose(a, b, rtol=3e-2, atol=3e-2)
    # W4A4: a BF16 rounding difference upstream can move an activation across an FP4 rounding boundary,
    # which whole-model logits amplify; so compare one layer, on the same input, hook included
    h = torch.randn(2, 40, kern.config.hidden_size, device="cuda", dtype=torch.bfloat16)
    a, b = kern.model.layers[0].mlp.up_proj(h).float(), dense.model.layers[0].mlp.up_proj(h).float()
    assert torch.allclose(a, b, rtol=2e-2, atol=2e-2), (a - b).abs().max()


@pytest.mark.gpu
def test_w4a4_input_hook_on_cuda_equals_the_reference():
    """The activation fake-quantize of a W4A4 layer runs the Triton kernel on CUDA, bit-exact with fp4lab.formats."""
    from fp4lab.export.checkpoint import PackedWeight
    from fp4lab.export.load import input_quantizer
    from fp4lab.export.scales import ct_encode_scale, exportable_amax
    from fp4lab.formats import quantize_nvfp4

    x = torch.randn(3, 50, 64, device="cuda", dtype=torch.bfloat16) * 4
    x[0, 0, :16] = 0
    amax = exportable_amax(torch.tensor(9.0))
    w = PackedWeight("nvfp4", torch.zeros(8, 32, dtype=torch.uint8), torch.ones(8, 4), torch.tensor(1.0),
                     ct_encode_scale(amax))
    got = input_quantizer(w)(None, (x,))[0]
    ref = quantize_nvfp4(x, global_amax=amax.cuda(), scale_order="compressed-tensors").dequantize(x.dtype)
    assert got.dtype == x.dtype and torch.equal(got, ref)
