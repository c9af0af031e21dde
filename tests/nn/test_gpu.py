"""GPU smoke tests of QuantLinear (Triton kernels + cuBLAS): `PYTHONPATH=. python3 -m pytest -m gpu tests/nn`.

Round-to-nearest quantization is bit-exact with the CPU reference, so with SR off the layer must
match the CPU layer up to GEMM accumulation order; SR uses the kernels' Philox stream (seeded from
the layer's seed state), so it is checked for reproducibility and unbiasedness, not bits.
"""
import pytest
import torch
import torch.nn as nn

from fp4lab.nn import QuantLinear, _ops, convert

pytestmark = pytest.mark.gpu


def _run(layer, x, dy):
    layer.reseed()
    layer.weight.grad = None
    xx = x.clone().requires_grad_(True)
    y = layer(xx)
    y.backward(dy)
    return y.float(), xx.grad.float(), layer.weight.grad.float()


def _rel(a, b):
    return ((a.cpu().double() - b.cpu().double()).norm() / b.cpu().double().norm()).item()


@pytest.mark.parametrize("recipe", ["nvfp4:stochastic_rounding=false", "mxfp4:stochastic_rounding=false", "fp8", "fp8-block"])
def test_cuda_matches_cpu_reference(recipe):
    torch.manual_seed(0)
    K, N, M = 256, 384, 512
    cpu = QuantLinear(K, N, recipe=recipe)
    gpu = QuantLinear(K, N, recipe=recipe, device="cuda")
    with torch.no_grad():
        gpu.weight.copy_(cpu.weight)
        gpu.bias.copy_(cpu.bias)
    x = torch.randn(M, K) * torch.exp(torch.randn(M, 1))
    dy = torch.randn(M, N)
    ref = _run(cpu, x.bfloat16(), dy.bfloat16())
    got = _run(gpu, x.bfloat16().cuda(), dy.bfloat16().cuda())
    for a, b in zip(got, ref):
        assert _rel(a, b) < 1e-2  # BF16 outputs; operands identical, only accumulation order differs


@pytest.mark.parametrize("recipe", ["nvfp4", "nvfp4:rht=false", "nvfp4:stochastic_rounding=false,scale_order=te"])
def test_dual_kernel_gives_the_separate_kernels_bits(recipe, monkeypatch):
    # dy takes one dual-kernel pass (Dgrad's rowwise + Wgrad's columnwise copy); the layer's outputs and
    # gradients must be the very bits of the separate passes, SR included (1000 tokens: padded blocks)
    torch.manual_seed(0)
    layer = QuantLinear(256, 384, recipe=recipe, device="cuda")
    x = torch.randn(1000, 256, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn(1000, 384, device="cuda", dtype=torch.bfloat16)
    dual = _ops.rowwise_and_columnwise
    results = []

    def counted(*a, **k):
        results.append(dual(*a, **k))
        return results[-1]

    monkeypatch.setattr(_ops, "rowwise_and_columnwise", counted)
    fused = _run(layer, x, dy)
    assert len(results) == 1 and results[0] is not None
    monkeypatch.setattr(_ops, "rowwise_and_columnwise", lambda *a, **k: None)
    separate = _run(layer, x, dy)
    for a, b in zip(fused, separate):
        assert torch.equal(a, b)


def test_stochastic_rounding_on_cuda_is_seeded_and_unbiased():
    torch.manual_seed(0)
    layer = QuantLinear(256, 256, recipe="nvfp4", device="cuda")
    x = torch.randn(1024, 256, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn(1024, 256, device="cuda", dtype=torch.bfloat16)
    a, b = _run(layer, x, dy), _run(layer, x, dy)
    assert torch.equal(a[2], b[2]) and torch.equal(a[1], b[1])
    true_dw = dy.float().t() @ x.float()
    assert _rel(a[2], true_dw) < 0.5 and torch.isfinite(a[2]).all()
    # averaging independent SR draws moves dW toward the unbiased value
    dws = []
    for seed in range(8):
        layer.set_recipe(layer.recipe.replace(seed=seed))
        layer.weight.grad = None
        layer(x.clone().requires_grad_(True)).backward(dy)
        dws.append(layer.weight.grad.float())
    assert _rel(torch.stack(dws).mean(0), true_dw) < _rel(dws[0], true_dw)


def test_saved_activations_shrink_to_nvfp4_size():
    model = nn.Sequential(*[nn.Linear(1024, 1024, bias=False) for _ in range(4)]).cuda().bfloat16()
    x = torch.randn(2048, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def saved_bytes(m):
        params = {p.untyped_storage().data_ptr() for p in m.parameters()}
        seen = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            m(x).sum().backward()
        return sum(seen.values())

    bf16 = saved_bytes(model)
    convert(model, "nvfp4:bf16_layers=none")
    assert saved_bytes(model) <= 0.35 * bf16


def test_inductor_compile_matches_eager():
    torch._dynamo.reset()
    layer = QuantLinear(256, 512, recipe="nvfp4:stochastic_rounding=false", device="cuda", dtype=torch.bfloat16)
    x = torch.randn(1024, 256, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn(1024, 512, device="cuda", dtype=torch.bfloat16)
    eager = _run(layer, x, dy)
    compiled = torch.compile(layer)
    layer.weight.grad = None
    xx = x.clone().requires_grad_(True)
    y = compiled(xx)
    y.backward(dy)
    for a, b in zip((y.float(), xx.grad.float(), layer.weight.grad.float()), eager):
        assert _rel(a, b) < 1e-2


@pytest.mark.parametrize("recipe,tol", [
    ("nvfp4:stochastic_rounding=false", 1e-2), ("mxfp4:stochastic_rounding=false", 1e-2),
    # SR: Inductor may issue the two draws of dy in another order than eager, and two different SR
    # draws differ by ~20-30% (norm) here; this only catches garbage (aot_eager is bit-exact on the CPU)
    ("nvfp4", 0.6),
])
def test_inductor_recompiles_for_new_shapes(recipe, tol):
    # the second and third token counts recompile with symbolic shapes: with Triton launches traced
    # inside the autograd.Function this failed on torch 2.11 (the operands are opaque custom ops now)
    torch._dynamo.reset()
    layer = QuantLinear(256, 512, recipe=recipe, device="cuda", dtype=torch.bfloat16)
    compiled = torch.compile(layer)
    for tokens in (1024, 512, 768):
        x = torch.randn(tokens, 256, device="cuda", dtype=torch.bfloat16)
        dy = torch.randn(tokens, 512, device="cuda", dtype=torch.bfloat16)
        eager = _run(layer, x, dy)
        layer.reseed()
        layer.weight.grad = None
        xx = x.clone().requires_grad_(True)
        y = compiled(xx)
        y.backward(dy)
        for a, b in zip((y.float(), xx.grad.float(), layer.weight.grad.float()), eager):
            assert _rel(a, b) < tol, tokens


def test_cuda_graph_replays_draw_fresh_sr_seeds():
    # the seed state lives on the GPU and is advanced inside the graph: each replay rounds with new
    # random numbers, the same ones an eager step from the same state uses
    from fp4lab.formats import seeds

    torch.manual_seed(0)
    layer = QuantLinear(256, 512, recipe="nvfp4", dtype=torch.bfloat16).cuda()  # the state follows on forward
    x = torch.randn(1024, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(1024, 512, device="cuda", dtype=torch.bfloat16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (Triton compiles, cuBLAS workspaces) off the capture
        for _ in range(2):
            layer.weight.grad = x.grad = None
            layer(x).backward(dy)
    torch.cuda.current_stream().wait_stream(side)
    assert layer.sr_state.is_cuda
    layer.weight.grad = x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        layer(x).backward(dy)
    replays = []
    layer.reseed()
    start = int(layer.sr_state)
    for _ in range(2):
        graph.replay()
        replays.append(layer.weight.grad.float().clone())
    assert int(layer.sr_state) == start + 4 * seeds.SEED_STEP
    assert not torch.equal(replays[0], replays[1])
    for i in range(2):
        layer.sr_state.fill_(start + 2 * i * seeds.SEED_STEP)
        eager = _run_keep_state(layer, x.detach(), dy)
        assert _rel(replays[i], eager) < 1e-4, i


def _run_keep_state(layer, x, dy):
    layer.weight.grad = None
    layer(x.clone().requires_grad_(True)).backward(dy)
    return layer.weight.grad.float()


def test_reduce_overhead_compile_of_a_model_moved_to_cuda():
    # the harness's path: build on the CPU, .cuda(), torch.compile(mode="reduce-overhead"); the compiled
    # graph never runs forward's device check, so the seed states must have moved with the module. Each
    # step (CUDA-graph replay) draws fresh SR seeds and the loss stays finite.
    torch.manual_seed(0)
    model = torch.nn.Sequential(QuantLinear(256, 512, recipe="nvfp4"), torch.nn.GELU(),
                                QuantLinear(512, 256, recipe="nvfp4")).cuda()
    assert all(m.sr_state.is_cuda for m in model if isinstance(m, QuantLinear))
    step = torch.compile(model, mode="reduce-overhead")
    x = torch.randn(512, 256, device="cuda")
    grads = []
    for _ in range(5):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step(x).float().square().mean()
        loss.backward()
        assert torch.isfinite(loss)
        grads.append(model[0].weight.grad.clone())
        model.zero_grad(set_to_none=True)
    assert not torch.equal(grads[-1], grads[-2])  # SR noise differs between replays
