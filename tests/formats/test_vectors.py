"""Every conformance vector of ../shared/research/nvfp4-spec.md §6 as an explicit test."""
import pytest
import torch

from fp4lab.formats import (
    RHT_SIGN_MASK,
    SCALE_ORDERS,
    pack_e2m1,
    quantize_mxfp4,
    quantize_nvfp4,
    random_hadamard_16,
    rht_matrix,
    unpack_e2m1,
)


def scale_bytes(t):
    return t.scales.view(torch.uint8).flatten().tolist()


def codes(t):
    return unpack_e2m1(t.codes).flatten().tolist()


def packed(t):
    return t.codes.flatten().tolist()


def row(*blocks):
    return torch.tensor([v for b in blocks for v in b], dtype=torch.float32)


V1 = row(
    [2688] + [0] * 15,
    [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.1, -0.5, -1, -1.5, -2, -3, -4, -6],
    [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, 6, -0.25, -0.75, -1.25, -1.75, -2.5, -3.5, -5, -6],
)


@pytest.mark.parametrize("order", SCALE_ORDERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_v1_grid_and_ties(order, dtype):
    t = quantize_nvfp4(V1.to(dtype), scale_order=order)
    assert scale_bytes(t) == [0x7E, 0x38, 0x38]
    assert codes(t)[:16] == [7] + [0] * 15
    assert codes(t)[16:32] == list(range(16))
    assert packed(t)[8:16] == [0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE]
    assert packed(t)[16:] == [0x20, 0x42, 0x64, 0x76, 0xA8, 0xCA, 0xEC, 0xFE]
    deq = t.dequantize(torch.float32)[32:].tolist()
    assert deq == [0, 1, 1, 2, 2, 4, 4, 6, -0.0, -1, -1, -2, -2, -4, -4, -6]
    assert float(t.global_decode_scale()) == 1.0


@pytest.mark.parametrize("order", SCALE_ORDERS)
def test_v2_scale_rounds_down_and_block_max_saturates(order):
    x = row([2688] + [0] * 15, [5, 4, 3, 2, 1, 0.5, 0.3, 0.1, -5, -4, -3, -2, -1, -0.5, -0.3, -0.1])
    t = quantize_nvfp4(x, scale_order=order)
    assert scale_bytes(t)[1] == 0x35  # 0.8125
    assert codes(t)[16:] == [7, 6, 6, 4, 2, 1, 1, 0, 0xF, 0xE, 0xE, 0xC, 0xA, 9, 9, 8]
    assert packed(t)[8:] == [0x67, 0x46, 0x12, 0x01, 0xEF, 0xCE, 0x9A, 0x89]
    d = t.dequantize(torch.float32)[16:]
    assert d[0] == 4.875 and d[1] == 3.25 and d[2] == 3.25 and d[7] == 0


@pytest.mark.parametrize("order", SCALE_ORDERS)
def test_v3_outlier(order):
    t = quantize_nvfp4(row([100] + [1] * 15, [1] * 16), scale_order=order)
    assert scale_bytes(t) == [0x7E, 0x49]
    assert codes(t) == [7] + [0] * 15 + [7] * 16
    assert packed(t)[8:] == [0x77] * 8


def test_v3_te_decode():
    t = quantize_nvfp4(row([100] + [1] * 15, [1] * 16), scale_order="te")
    assert t.dequantize(torch.float32)[16].item() == pytest.approx(1.0044643, abs=1e-7)


@pytest.mark.parametrize("order,byte", [("te", 0x63), ("torchao", 0x62), ("compressed-tensors", 0x62)])
def test_v4_op_order_tie(order, byte):
    t = quantize_nvfp4(row([73] + [0] * 15, [6.84375] + [0] * 15).bfloat16(), scale_order=order)
    assert scale_bytes(t) == [0x7E, byte]
    assert codes(t) == [7] + [0] * 15 + [7] + [0] * 15
    if order == "te":
        assert t.dequantize(torch.float32)[16].item() == pytest.approx(7.1696424, abs=1e-6)


@pytest.mark.parametrize("order", SCALE_ORDERS)
def test_v5_all_zero_block(order):
    t = quantize_nvfp4(row([6] + [0] * 15, [0] * 16), scale_order=order)
    assert scale_bytes(t) == [0x7E, 0x00]
    assert codes(t)[16:] == [0] * 16


@pytest.mark.parametrize("order", SCALE_ORDERS)
def test_v6_underflowing_block_has_zero_scale_and_saturated_codes(order):
    t = quantize_nvfp4(row([2688] + [0] * 15, [1e-4, -1e-4, 5e-5] + [0] * 13), scale_order=order)
    assert scale_bytes(t) == [0x7E, 0x00]
    assert codes(t)[16:19] == [7, 0xF, 7]  # TE's junk codes; the zero scale decodes them to 0
    assert t.dequantize(torch.float32)[16:].abs().max() == 0


@pytest.mark.parametrize("order", SCALE_ORDERS)
def test_v7_subnormal_scale_is_kept(order):
    t = quantize_nvfp4(row([2688] + [0] * 15, [0.02, 0.01, -0.015, 0.005] + [0] * 12), scale_order=order)
    assert scale_bytes(t) == [0x7E, 0x02]
    assert codes(t)[16:20] == [7, 5, 0xE, 3]
    d = t.dequantize(torch.float32)[16:20].tolist()
    assert d == [0.0234375, 0.01171875, -0.015625, 0.005859375]


@pytest.mark.parametrize("order", SCALE_ORDERS)
def test_v8_static_amax_too_small_saturates(order):
    t = quantize_nvfp4(row([100, 0.5] + [0] * 14), global_amax=1.0, scale_order=order)
    assert scale_bytes(t) == [0x7E]
    assert codes(t)[:2] == [7, 5]
    assert t.dequantize(torch.float32)[:2].tolist() == pytest.approx([1.0, 0.5], abs=1e-6)


@pytest.mark.parametrize("order", SCALE_ORDERS)
def test_all_zero_tensor_never_nan(order):
    t = quantize_nvfp4(torch.zeros(4, 32), scale_order=order)
    assert float(t.global_amax) == 0
    assert set(scale_bytes(t)) == {0}
    assert set(packed(t)) == {0}
    assert torch.equal(t.dequantize(torch.float32), torch.zeros(4, 32))


def test_negative_zero_decodes_to_zero():
    t = quantize_nvfp4(row([6] + [0] * 15, [-0.0] * 16))
    assert (t.dequantize(torch.float32)[16:] == 0).all()
    assert codes(t)[16:] == [8] * 16  # sign bit kept, as torchao and the CUDA conversion do


def test_w2d_tiles():
    w = torch.ones(16, 32)
    w[:, 16:] = 2.5
    w[0, 0] = 20
    w[5, 20] = -2.5
    t2 = quantize_nvfp4(w, block_2d=True, scale_order="te")
    assert t2.scales.view(torch.uint8).tolist() == [[0x7E, 0x66]] * 16
    c = unpack_e2m1(t2.codes)
    assert c[0].tolist() == [7] + [1] * 15 + [7] * 16
    assert (c[1:, :16] == 1).all() and c[5, 20] == 0xF
    assert t2.dequantize(torch.float32)[1, 0].item() == pytest.approx(1.6667, abs=1e-4)
    t1 = quantize_nvfp4(w, scale_order="te")
    assert t1.scales.view(torch.uint8)[1, 0] == 0x5B
    assert t1.dequantize(torch.float32)[1, 0].item() == pytest.approx(0.98214, abs=1e-5)
    # 2D: the quantization of W^T is the exact transpose; 1D: it is not
    t2t = quantize_nvfp4(w.T.contiguous(), block_2d=True, scale_order="te")
    assert torch.equal(unpack_e2m1(t2t.codes), c.T)
    t1t = quantize_nvfp4(w.T.contiguous(), scale_order="te")
    assert not torch.equal(unpack_e2m1(t1t.codes), unpack_e2m1(t1.codes).T)


def test_rht_vectors():
    h = rht_matrix()
    assert torch.equal(h @ h.T, torch.eye(16))
    assert RHT_SIGN_MASK == 0xD7E8
    e0 = torch.zeros(16)
    e0[0] = 1
    assert random_hadamard_16(e0).float().tolist() == [0.25] * 16
    assert random_hadamard_16(torch.ones(16)).float().tolist() == [-1, 0, 1, 0, 1, 0, -1, 0, 1, 2, 1, 0, 1, 0, 1, -2]
    assert random_hadamard_16(torch.arange(16.0)).float().tolist() == [
        -14.5, -7.5, 6.5, -0.5, 6.5, -0.5, -14.5, 8.5, 7.5, 14.5, 0.5, 1.5, 0.5, -2.5, 9.5, -15.5]


def test_rht_tensor_vector_columnwise_scales():
    x = torch.zeros(16, 16, dtype=torch.bfloat16)  # [tokens, features]
    x[0, 0] = 1
    x[:, 1] = 1
    x[:, 2] = torch.arange(16.0)
    col = quantize_nvfp4(random_hadamard_16(x.T), scale_order="te")
    assert float(col.global_amax) == 15.5
    assert float(quantize_nvfp4(x).global_amax) == 15
    assert scale_bytes(col)[:3] == [0x4E, 0x66, 0x7E]
    assert set(scale_bytes(col)[3:]) == {0}


def test_rht_is_bf16_rounded_and_cancels():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 64, generator=g).bfloat16()
    y = random_hadamard_16(x)
    assert y.dtype == torch.bfloat16
    h = torch.block_diag(*[rht_matrix(dtype=torch.float64)] * 4)
    exact = x.double() @ h
    assert torch.equal(y, exact.float().bfloat16())
    torch.testing.assert_close((exact @ h.T), x.double())


def test_packing_layout():
    assert pack_e2m1(torch.tensor([1, 2], dtype=torch.uint8)).tolist() == [0x21]
    assert unpack_e2m1(torch.tensor([0xFE], dtype=torch.uint8)).tolist() == [0xE, 0xF]


@pytest.mark.parametrize(
    "rule,scale0,packed0",
    [("floor", 127, 0x27), ("rceil", 128, 0x16)],
)
def test_v10_mxfp4_scale_rules(rule, scale0, packed0):
    rows = torch.tensor([[7.0] + [1.0] * 31, [3.0001] + [0.5] * 31, [6.0] + [0.25] * 31])
    t = quantize_mxfp4(rows, scale_rule=rule)
    expected = {"floor": [127, 126, 127], "rceil": [128, 127, 127]}[rule]
    assert t.scales.flatten().tolist() == expected
    assert t.codes[0, 0] == packed0
    if rule == "rceil":
        assert t.codes[1, 0] == 0x15
    c = unpack_e2m1(t.codes)
    assert c[2, :2].tolist() == [7, 0]  # 0.25 ties to 0
