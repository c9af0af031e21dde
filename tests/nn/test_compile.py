"""torch.compile of QuantLinear matches eager.

CPU CI uses the aot_eager backend (Dynamo capture + AOT autograd, bit-exact with eager) because
Inductor's C++ compile takes minutes on 2 cores; Inductor runs in the GPU test.
"""
import pytest
import torch

from fp4lab.nn import QuantLinear


def _grads(layer, x, fn):
    layer.reseed()  # both runs draw the same SR numbers
    layer.weight.grad = None
    xx = x.clone().requires_grad_(True)
    y = fn(xx)
    y.square().sum().backward()
    return y.detach(), xx.grad, layer.weight.grad


def test_compile_matches_eager():
    torch._dynamo.reset()
    layer = QuantLinear(32, 48, recipe="nvfp4")
    x = torch.randn(2, 16, 32)
    eager = _grads(layer, x, layer)
    compiled = _grads(layer, x, torch.compile(layer, backend="aot_eager"))
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)


@pytest.mark.parametrize("recipe", ["mxfp4", "fp8"])  # nvfp4: the whole-model test below
def test_no_graph_break_in_the_linear(recipe):
    torch._dynamo.reset()
    layer = QuantLinear(64, 64, recipe=recipe)
    explain = torch._dynamo.explain(layer)(torch.randn(16, 64, requires_grad=True))
    assert explain.graph_break_count == 0, [b.reason for b in explain.break_reasons]


class Block(torch.nn.Module):
    def __init__(self, d=32):
        super().__init__()
        self.norm1, self.norm2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.qkv, self.proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.up, self.down = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)

    def forward(self, x):
        q, k, v = self.qkv(self.norm1(x)).unflatten(-1, (3, 2, -1)).transpose(1, -2).unbind(-3)
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).flatten(-2))
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm2(x))))


class TinyLM(torch.nn.Module):
    def __init__(self, vocab=64, d=32, n=3):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        self.blocks = torch.nn.ModuleList(Block(d) for _ in range(n))
        self.lm_head = torch.nn.Linear(d, vocab, bias=False)

    def forward(self, ids):
        x = self.embed(ids)
        for b in self.blocks:
            x = b(x)
        return self.lm_head(x)


def test_whole_model_compiles_without_graph_breaks():
    """Every QuantLinear (SR included) stays inside one graph, forward and backward, next to norms,
    attention, embeddings and the head. (Dynamo traces each call site: ~5 s per layer here.)"""
    from fp4lab.nn import convert, quant_linears

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = convert(TinyLM(n=1), "nvfp4:bf16_layers=none")
    assert sum(m.plan.quantized for m in quant_linears(model)) == 4
    explain = torch._dynamo.explain(lambda ids: model(ids).float().logsumexp(-1).mean().backward())(
        torch.randint(0, 64, (2, 16)))
    assert explain.graph_break_count == 0, [b.reason for b in explain.break_reasons]


@pytest.mark.parametrize("recipe", ["nvfp4", "mxfp4"])
def test_recompiles_for_new_shapes_match_eager(recipe):
    """A second and third input shape recompile with symbolic sizes (Dynamo's automatic dynamic shapes);
    each call still equals eager, bit for bit. This is where the traced Triton launches failed on the
    GPU (torch 2.11), before the NVFP4/MXFP4 operands became opaque custom ops."""
    torch._dynamo.reset()
    layer = QuantLinear(32, 48, recipe=recipe)
    compiled = torch.compile(layer, backend="aot_eager")
    for shape in [(2, 16, 32), (3, 16, 32), (5, 32, 32)]:
        x = torch.randn(*shape)
        for a, b in zip(_grads(layer, x, layer), _grads(layer, x, compiled)):
            assert torch.equal(a, b), shape


def test_quantized_operands_are_opaque_custom_ops():
    """Dynamo's graph holds fp4lab's custom ops for the NVFP4 operands (the same graph on CPU and GPU:
    no Triton launch is traced), forward and backward."""
    torch._dynamo.reset()
    seen = set()

    def backend(gm, example_inputs):
        for mod in gm.modules():
            seen.update(str(n.target) for n in mod.graph.nodes if n.op == "call_function")
        return gm.forward

    layer = QuantLinear(32, 48, recipe="nvfp4")
    y = torch.compile(layer, backend=backend, fullgraph=True)(torch.randn(16, 32, requires_grad=True))
    y.sum().backward()
    assert {"fp4lab.fake_quantize", "fp4lab.quantize_nvfp4", "fp4lab.dequantize_nvfp4"} <= seen, sorted(seen)
