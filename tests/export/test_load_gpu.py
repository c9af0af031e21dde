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
    a, b = kern(x).logits.float(), dense(x).logits.float()
    # BF16 GEMMs with different accumulation orders: equal to BF16 rounding, not bit for bit
    assert torch.allclose(a, b, rtol=3e-2, atol=3e-2)
