"""The PTQ encoders against fp4lab.formats, and Four Over Six's per-block guarantee."""
import pytest
import torch

from fp4lab.export.scales import amax_for_encode_scale, ct_encode_scale, exportable_amax, is_reciprocal_stable
from fp4lab.formats import quantize_fp8, quantize_mxfp4, quantize_nvfp4, unpack_e2m1
from fp4lab.ptq.weights import (
    choose_nvfp4_scales,
    fp8_encode,
    fp8_scale,
    mxfp4_encode,
    mxfp4_scale_bytes,
    nvfp4_encode,
    nvfp4_global,
    quantize_weight_rtn,
)


def _weights(seed=0, rows=48, cols=96):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.exp(torch.randn(rows, 1, generator=g) * 2)
    w[0] = 0  # all-zero row
    w[1, :16] = 1e-9  # block whose scale underflows to 0 / subnormal
    w[2, 3] = 500.0  # outlier: the tensor amax
    w[3, 16:32] = torch.tensor([1.25, 1.75, 2.5, 3.5, 5.0, 0.25, 0.75, -1.25] * 2) / 6 * 3  # E2M1 ties
    return w.bfloat16().float()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nvfp4_encoder_matches_formats_bit_exactly(seed):
    w = _weights(seed)
    amax, G = nvfp4_global(w.abs().amax())
    s = choose_nvfp4_scales(w, G, four_over_six=False)
    codes, deq = nvfp4_encode(w, s, G)
    ref = quantize_nvfp4(w, global_amax=amax, scale_order="compressed-tensors")
    assert torch.equal(s.view(torch.uint8), ref.scales.view(torch.uint8))
    assert torch.equal(codes, unpack_e2m1(ref.codes))
    assert torch.equal(deq, ref.dequantize(torch.float32))


def test_nvfp4_all_zero_tensor():
    pw = quantize_weight_rtn(torch.zeros(4, 32), "nvfp4a16")
    assert float(pw.global_scale) == 1.0 and torch.equal(pw.dequantize(torch.float32), torch.zeros(4, 32))


def test_four_over_six_never_worse_per_block_and_decodes_as_standard():
    w = _weights(3)
    amax, G = nvfp4_global(w.abs().amax())
    std = choose_nvfp4_scales(w, G, False)
    fos = choose_nvfp4_scales(w, G, True)
    err = lambda s: ((nvfp4_encode(w, s, G)[1] - w) ** 2).unflatten(-1, (-1, 16)).sum(-1)  # noqa: E731
    e_std, e_fos = err(std), err(fos)
    assert (e_fos <= e_std).all()
    picked4 = fos.float() != std.float()
    assert picked4.any() and (e_fos[picked4] < e_std[picked4]).all()
    assert e_fos.sum() < e_std.sum()
    # the stored tensors decode with the standard NVFP4 formula (fp4lab.formats) to the values we optimised
    pw = quantize_weight_rtn(w, "nvfp4a16", four_over_six=True)
    assert torch.equal(pw.to_formats().dequantize(torch.float32), nvfp4_encode(w, fos, G)[1])


def test_mxfp4_and_fp8_encoders_match_formats():
    w = _weights(4, cols=128)
    s = mxfp4_scale_bytes(w)
    codes, deq = mxfp4_encode(w, s)
    ref = quantize_mxfp4(w, scale_rule="floor")
    assert torch.equal(s, ref.scales) and torch.equal(codes, unpack_e2m1(ref.codes))
    assert torch.equal(deq, ref.dequantize(torch.float32))
    q, deq = fp8_encode(w, fp8_scale(w.abs().amax()))
    ref = quantize_fp8(w)
    assert torch.equal(q.view(torch.uint8), ref.data.view(torch.uint8))
    assert torch.equal(deq, ref.dequantize(torch.float32))


def test_exportable_amax_is_reciprocal_stable_and_recoverable():
    g = torch.Generator().manual_seed(5)
    for a in (torch.rand(200, generator=g) * 100 + 1e-4).tolist():
        e = exportable_amax(a)
        assert a <= float(e) <= a * (1 + 1e-5)
        G = ct_encode_scale(e)
        assert is_reciprocal_stable(G)
        assert torch.equal(ct_encode_scale(amax_for_encode_scale(G)), G)
    with pytest.raises(ValueError, match="finite"):
        exportable_amax(float("nan"))


def test_encode_scale_is_the_one_fp4lab_formats_decodes_with():
    g = torch.Generator().manual_seed(6)
    for a in [0.0, 1e-30, 3.0, 73.5, *(torch.rand(50, generator=g) * 1e3).tolist()]:
        x = torch.zeros(1, 16)
        x[0, 0] = a
        t = quantize_nvfp4(x, scale_order="compressed-tensors")
        assert torch.equal(t.block_decode_scales(), t.scales.float() / ct_encode_scale(a))
