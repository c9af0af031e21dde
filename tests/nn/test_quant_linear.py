"""QuantLinear against a float64 reference that quantizes the same operands with fp4lab.formats.

The reference is written from spec table §4.1 directly (not from fp4lab.nn's plan), dequantizes each
operand to BF16 exactly as the layer does, and multiplies in float64; the layer accumulates in fp32,
so the tolerance is fp32 accumulation error. Stochastic rounding uses the layer's seed state: the
Dgrad copy of dy takes its seed, the Wgrad copy the next one.
"""
import pytest
import torch
import torch.nn as nn

from fp4lab import formats as fm
from fp4lab.formats import seeds
from fp4lab.nn import NonFiniteError, QuantLinear, _ops, debug_nonfinite
from fp4lab.recipes import get_recipe

BF = torch.bfloat16


def dq(p):
    return p.dequantize(BF).double()


def reference(recipe, x, w, b, dy, seed):
    """(y, dx, dW, db) in float64 for one recipe, operands quantized per spec §4.1; SR as a layer whose
    seed state starts at `seed`: Dgrad's dy draws with that seed, Wgrad's with the next one."""
    r = get_recipe(recipe)
    x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    gens = iter([None] * 2 if seed is None else
                [torch.Generator().manual_seed(seed + i * seeds.SEED_STEP) for i in range(2)])
    sr = "stochastic" if r.stochastic_rounding else "nearest"
    if r.format == "nvfp4":
        def _nv(t, **kw):
            return dq(fm.quantize_nvfp4(t, scale_order=r.scale_order, **kw))
        xq, wq = _nv(x2), _nv(w, block_2d=r.weight_2d)
        wq_d = wq if r.weight_2d else _nv(w.t().contiguous()).t()
        dyq = _nv(dy2, rounding=sr, generator=next(gens))
        h = (lambda t: fm.random_hadamard_16(t)) if r.rht else (lambda t: t.contiguous())
        dyc = _nv(h(dy2.t()), rounding=sr, generator=next(gens))
        xc = _nv(h(x2.t()))
    elif r.format == "mxfp4":
        def mx(t, **kw):
            return dq(fm.quantize_mxfp4(t, scale_rule=r.mxfp4_scale_rule, **kw))
        xq, wq = mx(x2), mx(w)
        wq_d = mx(w.t().contiguous()).t()
        dyq = mx(dy2, rounding=sr, generator=next(gens))
        h = (lambda t: fm.random_hadamard_16(t)) if r.rht else (lambda t: t.contiguous())
        dyc = mx(h(dy2.t()), rounding=sr, generator=next(gens))
        xc = mx(h(x2.t()))
    else:
        gran = "block128" if r.format == "fp8-block" else "tensor"
        gf = r.fp8_grad_format

        def f8(t, fmt="e4m3", **kw):
            return dq(fm.quantize_fp8(t, fmt=fmt, granularity=gran, **kw))
        xq = f8(x2)
        wq = f8(w, block_2d=r.weight_2d and gran == "block128")
        wq_d = wq
        dyq = f8(dy2, gf)
        dyc = f8(dy2.t().contiguous(), gf)
        xc = f8(x2.t().contiguous())
    y = xq @ wq.t() + b.double()
    dx = dyq @ wq_d
    dw = dyc @ xc.t()
    db = dy2.double().sum(0)
    return y.reshape(*x.shape[:-1], -1), dx.reshape(x.shape), dw, db


def run_layer(recipe, x, w, b, dy, seed=0):
    layer = QuantLinear(w.shape[1], w.shape[0], recipe=get_recipe(recipe).replace(seed=seed))
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    xx = x.clone().requires_grad_(True)
    y = layer(xx)
    y.backward(dy)
    return y, xx.grad, layer.weight.grad, layer.bias.grad


def close(actual, expected, rel=2e-6):
    """fp32 accumulation of BF16 products vs float64: error << 1e-5 of the output scale."""
    scale = expected.abs().max().item() + 1e-30
    err = (actual.double() - expected).abs().max().item()
    assert err <= rel * scale * 8, f"max error {err:.3g} vs scale {scale:.3g}"


def _inputs(M=64, K=64, N=48, lead=(2,), seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    # magnitudes spread over rows/columns so that blocks get different scales
    x = torch.randn(*lead, M, K, generator=g) * torch.exp(torch.randn(M, 1, generator=g))
    w = torch.randn(N, K, generator=g) * 0.1 * torch.exp(torch.randn(1, K, generator=g) * 0.5)
    b = torch.randn(N, generator=g)
    dy = torch.randn(*lead, M, N, generator=g) * torch.exp(torch.randn(M, 1, generator=g))
    return x.to(dtype), w, b, dy.to(dtype)


def test_bf16_recipe_is_nn_linear_exactly():
    x, w, b, dy = _inputs()
    lin = nn.Linear(64, 48)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    xx = x.clone().requires_grad_(True)
    y = lin(xx)
    y.backward(dy)
    yq, dxq, dwq, dbq = run_layer("bf16", x, w, b, dy)
    assert torch.equal(y, yq) and torch.equal(xx.grad, dxq)
    assert torch.equal(lin.weight.grad, dwq) and torch.equal(lin.bias.grad, dbq)


@pytest.mark.parametrize("recipe", [
    "nvfp4", "nvfp4:rht=false", "nvfp4:stochastic_rounding=false", "nvfp4:weight_2d=false",
    "nvfp4:scale_order=te", "mxfp4", "mxfp4:mxfp4_scale_rule=floor", "fp8", "fp8:fp8_grad_format=e4m3", "fp8-block",
])
def test_matches_float64_reference(recipe):
    x, w, b, dy = _inputs(M=64 if "fp8-block" not in recipe else 128, N=64 if "mxfp4" in recipe else 48)
    if recipe.startswith("fp8-block"):
        w = torch.randn(256, 64) * 0.1  # more than one 128-row tile
        b, dy = torch.randn(256), torch.randn(2, 128, 256)
    seed = 5
    y, dx, dw, db = run_layer(recipe, x, w, b, dy, seed=seed)
    ry, rdx, rdw, rdb = reference(recipe, x, w, b, dy, seed * 1_000_003)
    assert y.dtype == x.dtype and dw.dtype == torch.float32
    close(y, ry)
    close(dx, rdx)
    close(dw, rdw)
    close(db, rdb)
    # and the quantization is real: the BF16 product differs
    assert (y.double() - (x.double() @ w.double().t() + b.double())).abs().max() > 1e-4


def test_bf16_activations_give_bf16_outputs():
    x, w, b, dy = _inputs(dtype=BF)
    y, dx, dw, db = run_layer("nvfp4:stochastic_rounding=false", x, w, b, dy)
    assert y.dtype == BF and dx.dtype == BF and dw.dtype == torch.float32
    ry, rdx, rdw, _ = reference("nvfp4:stochastic_rounding=false", x, w, b, dy, None)
    close(y, ry, rel=2e-3)  # one BF16 rounding of the output
    close(dx, rdx, rel=2e-3)
    close(dw, rdw)


def test_stochastic_rounding_is_seeded_and_reproducible():
    x, w, b, dy = _inputs()
    a = run_layer("nvfp4", x, w, b, dy, seed=1)
    c = run_layer("nvfp4", x, w, b, dy, seed=1)
    d = run_layer("nvfp4", x, w, b, dy, seed=2)
    assert torch.equal(a[1], c[1]) and torch.equal(a[2], c[2])
    assert not torch.equal(a[2], d[2])
    assert torch.equal(a[0], d[0])  # the forward pass never uses SR


def test_rht_cancels_in_wgrad():
    """Unquantized transformed product (dy^T H)(x^T H)^T equals dy^T x (H orthogonal, exact in BF16)."""
    g = torch.Generator().manual_seed(0)
    x, dy = torch.randn(64, 32, generator=g).to(BF), torch.randn(64, 48, generator=g).to(BF)
    hx = fm.random_hadamard_16(x.t().contiguous()).double()
    hdy = fm.random_hadamard_16(dy.t().contiguous()).double()
    ref = dy.double().t() @ x.double()
    assert torch.allclose(hdy @ hx.t(), ref, rtol=0, atol=2e-2 * ref.abs().max().item())
    h = fm.rht_matrix(dtype=torch.float64)
    hx64 = (x.t().double().unflatten(-1, (-1, 16)) @ h).flatten(-2)
    hdy64 = (dy.t().double().unflatten(-1, (-1, 16)) @ h).flatten(-2)
    assert torch.allclose(hdy64 @ hx64.t(), ref, rtol=1e-12, atol=1e-10)
    # the layer's Wgrad with RHT, without quantization noise, is close to the true dW
    xq, w, b, dyq = _inputs(M=256, K=32, N=16, lead=())
    _, _, dw_rht, _ = run_layer("nvfp4:stochastic_rounding=false", xq, w, b, dyq)
    true = dyq.double().t() @ xq.double()
    assert (dw_rht.double() - true).norm() / true.norm() < 0.2


def test_2d_weight_quantization_is_identical_in_fprop_and_dgrad():
    x, w, b, dy = _inputs(M=32, K=64, N=32, lead=())
    layer = QuantLinear(64, 32, recipe="nvfp4:stochastic_rounding=false")
    with torch.no_grad():
        layer.weight.copy_(w)
    wq = fm.quantize_nvfp4(w, block_2d=True).dequantize(BF).double()
    # Fprop with x = identity rows recovers Q(W)^T exactly; Dgrad with dy = identity recovers Q(W)
    eye_k = torch.eye(64, requires_grad=True)
    layer.bias.data.zero_()
    y = layer(eye_k * 4)  # 4 * I: every x block quantizes exactly
    assert torch.equal(y.double() / 4, wq.t())
    eye_n = torch.eye(32) * 4
    y.backward(eye_n[:, :32].repeat(2, 1)[:64])
    # rows 0..31 of dx carry 4 * Q(W) (dy = 4 * e_i), rows 32..63 the same again
    assert torch.equal(eye_k.grad[:32].double() / 16, wq)  # d(4x)/dx = 4 times dy = 4 e_i
    wt2d = fm.quantize_nvfp4(w.t().contiguous(), block_2d=True).dequantize(BF).double()
    assert torch.equal(wt2d.t(), wq)  # 2D tiles are transpose-consistent; 1D blocks are not
    w1d = fm.quantize_nvfp4(w).dequantize(BF).double()
    w1d_t = fm.quantize_nvfp4(w.t().contiguous()).dequantize(BF).double().t()
    assert not torch.equal(w1d, w1d_t)


def test_saved_activation_is_packed_nvfp4():
    """What backward keeps for Wgrad is the columnwise post-RHT NVFP4 copy (uint8 + e4m3), not BF16."""
    x, w, b, _ = _inputs(M=64, K=64, N=48, lead=())
    layer = QuantLinear(64, 48, recipe="nvfp4")
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x.requires_grad_(True))
    extra = [t for t in saved if t is not layer.weight]  # the parameter itself costs nothing extra
    assert sorted(str(t.dtype) for t in extra) == ["torch.float32", "torch.float8_e4m3fn", "torch.uint8"]
    codes = next(t for t in extra if t.dtype == torch.uint8)
    assert codes.shape == (64, 32)  # x^T [K, M] packed two per byte
    total = sum(t.numel() * t.element_size() for t in extra)
    assert total <= 0.5625 * x.numel() + 4  # 4.5 bits per activation: 0.28x of BF16


def test_tokens_not_multiple_of_16_and_empty_batch():
    x, w, b, dy = _inputs(M=13, K=32, N=16, lead=())
    y, dx, dw, db = run_layer("nvfp4:stochastic_rounding=false", x, w, b, dy)
    xp = torch.nn.functional.pad(x, (0, 0, 0, 3))
    dyp = torch.nn.functional.pad(dy, (0, 0, 0, 3))
    _, _, rdw, _ = reference("nvfp4:stochastic_rounding=false", xp, w, b, dyp, None)
    close(dw, rdw)
    ry, rdx, _, _ = reference("nvfp4:stochastic_rounding=false", x, w, b, dy, None)
    close(y, ry)
    close(dx, rdx)
    e = torch.zeros(0, 32, requires_grad=True)
    layer = QuantLinear(32, 16, recipe="nvfp4")
    out = layer(e)
    out.sum().backward()
    assert out.shape == (0, 16) and torch.all(layer.weight.grad == 0)


def test_nonfinite_propagates_without_raising():
    x, w, b, dy = _inputs(M=32, K=32, N=16, lead=())
    x[3, 5] = float("nan")
    y, dx, dw, _ = run_layer("nvfp4", x, w, b, dy)
    assert torch.isnan(y).all()  # one NaN poisons the tensor amax, so the whole quantized x
    assert not torch.isfinite(dw).all()
    x2, w2, b2, dy2 = _inputs(M=32, K=32, N=16, lead=())
    dy2[0, 0] = float("inf")
    _, dx2, dw2, _ = run_layer("nvfp4", x2, w2, b2, dy2)
    assert not torch.isfinite(dx2).all() and not torch.isfinite(dw2).all()


@pytest.mark.parametrize("recipe", ["mxfp4", "fp8", "fp8-block"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_propagates_in_every_format(recipe, bad):
    x, w, b, dy = _inputs(M=32, K=64, N=64, lead=())
    x[3, 5] = bad
    y, dx, dw, _ = run_layer(recipe, x, w, b, dy)
    assert not torch.isfinite(y).all() and not torch.isfinite(dw).all()


def test_debug_mode_names_the_first_bad_module():
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32))
    from fp4lab.nn import convert
    convert(model, "nvfp4:bf16_layers=none")
    x = torch.randn(16, 32)
    with debug_nonfinite(model):
        model(x).sum().backward()  # finite: no error
        with torch.no_grad():
            model[2].weight[0, 0] = float("inf")
        with pytest.raises(NonFiniteError, match="forward output of 2"):
            model(x)
        with torch.no_grad():
            model[2].weight[0, 0] = 0.0
        with pytest.raises(NonFiniteError, match=r"(gradient|Dgrad).* of 2"):
            (model(x).sum() * float("inf")).backward()
    model(x)  # hooks removed: propagates silently


def test_in_features_not_multiple_of_16_stays_bf16_with_warning():
    with pytest.warns(UserWarning, match="not multiples of 16; kept in BF16"):
        layer = QuantLinear(24, 16, recipe="nvfp4")
    assert not layer.plan.quantized and "kept BF16" in layer.note
    x = torch.randn(4, 24)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))


def test_autocast_gives_bf16_output():
    layer = QuantLinear(32, 16, recipe="nvfp4")
    with torch.autocast("cpu", dtype=BF):
        y = layer(torch.randn(8, 32))
    assert y.dtype == BF


def test_deepcopy_gets_its_own_sr_stream():
    import copy

    layer = QuantLinear(32, 32, recipe="nvfp4")
    twin = copy.deepcopy(layer)
    assert twin.sr_key != layer.sr_key and twin.sr_state is not layer.sr_state
    x, dy = torch.randn(16, 32), torch.randn(16, 32)
    grads = []
    for m in (layer, twin):
        m(x.clone().requires_grad_(True)).backward(dy)
        grads.append(m.weight.grad)
    assert torch.equal(grads[0], grads[1])  # same seed, separate generators: same draws


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@pytest.mark.parametrize("case", ["random", "outliers", "zeros", "nan", "empty", "odd"])
def test_fp8_tensor_fast_path_matches_the_reference(fmt, case):
    """The CUDA per-tensor FP8 path (eager ops around the Triton amax) against fp4lab.formats."""
    from fp4lab import formats

    g = torch.Generator().manual_seed(7)
    shape = {"empty": (0, 32), "odd": (37, 19)}.get(case, (64, 96))
    x = torch.randn(*shape, generator=g).to(torch.bfloat16)
    if case == "outliers":
        x[3, 4], x[10, 1] = 3e4, -1e-30
    if case == "zeros":
        x.zero_()
    if case == "nan":
        x[5, 6] = float("nan")
    got = _ops._fp8_tensor_fake(x, fmt, torch.bfloat16)
    ref = formats.fake_quantize(x, f"fp8_{fmt}", nonfinite="propagate").to(torch.bfloat16)
    assert got.shape == ref.shape and got.dtype == torch.bfloat16
    assert torch.equal(got.isnan(), ref.isnan())
    assert torch.equal(got.nan_to_num(), ref.nan_to_num())


@pytest.mark.parametrize("recipe,passes", [("fp8", 4), ("fp8:fp8_grad_format=e4m3", 4), ("fp8-block", 6)])
def test_fp8_per_tensor_quantizes_x_and_dy_once(recipe, passes, monkeypatch):
    # one scale per tensor: Q(t^T) = Q(t)^T, so Wgrad reads Fprop's Q(x) and Dgrad's Q(dy) transposed
    # (W: Fprop, then Dgrad re-quantizes the parameter); 1x128 blocks run along the other dim in Wgrad
    calls = []
    real = _ops.fake_quantize
    monkeypatch.setattr(_ops, "fake_quantize", lambda t, q, **kw: calls.append(kw.get("columnwise", False)) or real(t, q, **kw))
    x, w, b, dy = _inputs(M=128, K=128, N=128)
    y, dx, dw, _ = run_layer(recipe, x, w, b, dy)
    assert len(calls) == passes and any(calls) == recipe.startswith("fp8-block"), calls
    if not recipe.startswith("fp8-block"):
        fmt, gfmt = "fp8_e4m3", "fp8_e4m3" if "e4m3" in recipe else "fp8_e5m2"
        fq = lambda t, f: fm.fake_quantize(t.reshape(-1, t.shape[-1]), f).to(torch.bfloat16).float()  # noqa: E731
        assert torch.equal(dw, fq(dy, gfmt).t() @ fq(x, fmt))


@pytest.mark.parametrize("recipe,draws", [("nvfp4", 2), ("mxfp4", 2), ("nvfp4:stochastic_rounding=false", 0),
                                          ("fp8", 0)])
def test_sr_seed_state_advances_once_per_stochastic_quantization(recipe, draws):
    # Dgrad's and Wgrad's dy each take one seed; round-to-nearest takes none. The state is neither a
    # parameter nor a buffer (DDP would broadcast rank 0's to every rank), so not in the state_dict
    layer = QuantLinear(32, 32, recipe=get_recipe(recipe).replace(seed=3))
    start = int(layer.sr_state)
    assert start == 3 * 1_000_003 and "sr_state" not in layer.state_dict()
    assert not any(b is layer.sr_state for b in layer.buffers())
    layer(torch.randn(16, 32, requires_grad=True)).sum().backward()
    assert int(layer.sr_state) == start + draws * seeds.SEED_STEP
    layer.sr_state = layer.sr_state.clone()  # as a move to another device does
    assert _ops.sr_state(layer.sr_key) is layer.sr_state
    # deferred init (meta device, then to_empty, as FSDP2 users build large models): the state lands on
    # the layer's device, starting at the layer's seed
    lazy = QuantLinear(32, 32, device="meta", recipe=get_recipe(recipe).replace(seed=3)).to_empty(device="cpu")
    with torch.no_grad():
        lazy.weight.normal_()
        lazy.bias.zero_()
    lazy(torch.randn(16, 32))
    assert lazy.sr_state.device.type == "cpu" and int(lazy.sr_state) == start
    layer.reseed()
    assert int(layer.sr_state) == start


def test_sr_seed_state_follows_module_moves():
    # .to() / .to_empty() carry the state (a compiled graph never runs forward's device check), a dtype
    # cast leaves it an int64 with its value, and the compiled ops' lookup moves a state left behind
    # (FSDP2 moves parameters without Module._apply)
    layer = QuantLinear(32, 32, recipe=get_recipe("nvfp4").replace(seed=3))
    layer.sr_state.add_(5)
    layer.to(torch.float64)
    assert layer.sr_state.dtype == torch.int64 and int(layer.sr_state) == 3 * 1_000_003 + 5
    lazy = QuantLinear(32, 32, device="meta", recipe=get_recipe("nvfp4").replace(seed=3))
    assert lazy.sr_state.is_meta
    lazy.to_empty(device="cpu")
    assert lazy.sr_state.device.type == "cpu" and int(lazy.sr_state) == 3 * 1_000_003
    lazy.sr_state = lazy.sr_state.to("meta")
    state = _ops.sr_state(lazy.sr_key, torch.device("cpu"))
    assert state is lazy.sr_state and state.device.type == "cpu" and int(state) == 3 * 1_000_003
