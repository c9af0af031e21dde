"""`fp4lab inspect` diagnostics and the four PTQ commands through the CLI."""
import json
import math

import pytest
import torch

from fp4lab.cli import main
from fp4lab.ptq.inspect import inspect_model, layer_stats
from fp4lab.ptq.weights import quantize_weight_rtn


def test_layer_stats_definitions():
    w = torch.tensor([[1e-6] * 15 + [6.0], [3.0] * 16])  # row 0: tiny values underflow; row 1: all at the max
    s = layer_stats(w, quantize_weight_rtn(w, "nvfp4a16"))
    assert math.isclose(s["underflow_pct"], 100 * 15 / 32)
    assert math.isclose(s["saturated_pct"], 100 * 17 / 32)
    q = quantize_weight_rtn(w, "nvfp4a16").dequantize(torch.float32)
    assert math.isclose(s["sqnr_db"], 10 * math.log10(float((w**2).sum() / ((w - q) ** 2).sum())), rel_tol=1e-6)


def test_inspect_bf16_and_quantized_dirs(tiny_llama, tmp_path):
    a = inspect_model(tiny_llama, scheme="nvfp4a16")
    assert len(a) == 14 and all(10 < s["sqnr_db"] < 30 for s in a.values())  # ~4.5 bits: ~20 dB
    fos = inspect_model(tiny_llama, scheme="nvfp4a16", four_over_six=True)
    assert sum(s["sqnr_db"] for s in fos.values()) > sum(s["sqnr_db"] for s in a.values())
    assert main(["quantize", str(tiny_llama), str(tmp_path / "q")]) == 0
    b = inspect_model(tmp_path / "q", reference=tiny_llama)
    for n in a:  # reading the stored codes back gives the same numbers as quantizing here
        assert math.isclose(a[n]["sqnr_db"], b[n]["sqnr_db"], rel_tol=1e-9)
    assert "sqnr_db" not in inspect_model(tmp_path / "q")[n]


def test_cli_quantize_convert_eval_inspect(tiny_llama, calib_ids, tmp_path, capsys):
    torch.save(calib_ids, tmp_path / "ids.pt")
    q, mo = tmp_path / "q", tmp_path / "mo"
    assert main(["quantize", str(tiny_llama), str(q), "--scheme", "nvfp4", "--method", "gptq", "--four-over-six",
                 "--calib", str(tmp_path / "ids.pt"), "--calib-samples", "4", "--calib-len", "32"]) == 0
    assert main(["convert", str(q), str(mo), "--to", "modelopt"]) == 0
    results = {}
    for d in (tiny_llama, q, mo):
        out = tmp_path / f"{d.name}.json"
        assert main(["eval", str(d), "--data", str(tmp_path / "ids.pt"), "--ctx", "64", "--max-tokens", "300",
                     "--json", str(out)]) == 0
        results[d.name] = json.loads(out.read_text())
    assert results["q"]["ppl"] == results["mo"]["ppl"] and results["q"]["scheme"] == "nvfp4"
    assert results["q"]["tokens"] == 299 and math.isfinite(results[tiny_llama.name]["ppl"])
    png = tmp_path / "i.png"
    assert main(["inspect", str(q), "--reference", str(tiny_llama), "--plot", str(png)]) == 0
    assert png.stat().st_size > 1000 and "SQNR" in capsys.readouterr().out
    # errors come back as a message and exit code 2, not a traceback
    assert main(["quantize", str(tiny_llama), str(tmp_path / "x"), "--scheme", "nvfp4"]) == 2
    assert "needs static activation scales" in capsys.readouterr().err


def test_nvfp4_linear_path_matches_dense_path(tiny_llama, tmp_path):
    pytest.importorskip("fp4lab.nn.nvfp4_linear")
    from fp4lab.export import load_quantized

    assert main(["quantize", str(tiny_llama), str(tmp_path / "q")]) == 0
    dense = load_quantized(tmp_path / "q", use_kernel=False)
    kern = load_quantized(tmp_path / "q", use_kernel=True)
    assert type(kern.model.layers[0].self_attn.q_proj).__name__ == "NVFP4Linear"
    x = torch.randint(0, 256, (1, 12))
    a, b = dense(x).logits.float(), kern(x).logits.float()
    # NVFP4Linear decodes q * fp32(s * (1/G)), compressed-tensors q * fp32(s / G): equal up to an fp32 ulp
    # before the BF16 rounding of the weight, so a few BF16 weights may differ by one BF16 ulp
    assert torch.allclose(a, b, rtol=2e-2, atol=2e-2)
