"""ModelOpt layout, compressed-tensors' own ModelOpt converter, and byte-identical round trips."""
import filecmp
import json

import pytest
import torch
from safetensors.torch import load_file

from fp4lab.export import convert_checkpoint, load_quantized
from fp4lab.ptq.quantize import PTQConfig, quantize_dir


@pytest.fixture(scope="module")
def w4a4(tiny_llama, calib_ids, tmp_path_factory):
    cfg = PTQConfig(scheme="nvfp4", calib_samples=8, calib_len=64)
    ct_dir = quantize_dir(tiny_llama, tmp_path_factory.mktemp("ct"), cfg, calib_ids=calib_ids)
    mo_dir = quantize_dir(tiny_llama, tmp_path_factory.mktemp("mo"), cfg, calib_ids=calib_ids, fmt="modelopt")
    return ct_dir, mo_dir


def _files_identical(a, b):
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    return all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def test_modelopt_layout_and_decode_convention(w4a4, tiny_llama):
    ct_dir, mo_dir = w4a4
    hf = json.loads((mo_dir / "hf_quant_config.json").read_text())
    assert hf["producer"]["name"] == "modelopt"
    assert hf["quantization"] == {"quant_algo": "NVFP4", "group_size": 16, "kv_cache_quant_algo": None,
                                  "exclude_modules": ["lm_head"]}
    mo, ct_t = load_file(str(mo_dir / "model.safetensors")), load_file(str(ct_dir / "model.safetensors"))
    orig = load_file(str(tiny_llama / "model.safetensors"))
    name = "model.layers.0.mlp.down_proj"
    assert mo[f"{name}.weight"].dtype == torch.uint8 and mo[f"{name}.weight"].shape == (64, 64)
    assert mo[f"{name}.weight_scale"].dtype == torch.float8_e4m3fn and mo[f"{name}.weight_scale"].shape == (64, 8)
    for p in ("weight_scale_2", "input_scale"):
        assert mo[f"{name}.{p}"].dtype == torch.float32 and mo[f"{name}.{p}"].shape == ()
    # DECODE factor: weight_scale_2 = amax / (6*448) (to an ulp: amax is nudged to a reciprocal-stable scale)
    amax = orig[f"{name}.weight"].float().abs().amax()
    assert torch.allclose(mo[f"{name}.weight_scale_2"], amax / 2688, rtol=2e-7, atol=0)
    assert float(mo[f"{name}.input_scale"]) < 1 < float(ct_t[f"{name}.input_global_scale"])
    # the same codes and block scales as the compressed-tensors export; the global factors are reciprocals
    assert torch.equal(mo[f"{name}.weight"], ct_t[f"{name}.weight_packed"])
    assert torch.equal(1 / mo[f"{name}.weight_scale_2"], ct_t[f"{name}.weight_global_scale"].reshape(()))
    # fused q/k/v share one global scale
    q, k, v = (mo[f"model.layers.1.self_attn.{p}_proj.weight_scale_2"] for p in "qkv")
    assert torch.equal(q, k) and torch.equal(k, v)


def test_compressed_tensors_converter_turns_our_modelopt_into_our_ct(w4a4, tmp_path):
    from compressed_tensors.entrypoints.convert import ModelOptNvfp4Converter, convert_checkpoint as ct_convert
    from compressed_tensors.quantization import QuantizationConfig

    ct_dir, mo_dir = w4a4
    ct_convert(mo_dir, tmp_path, ModelOptNvfp4Converter(ignore=["lm_head"], targets=["Linear"]), device="cpu")
    theirs, ours = load_file(str(tmp_path / "model.safetensors")), load_file(str(ct_dir / "model.safetensors"))
    assert sorted(theirs) == sorted(ours)
    for n, t in ours.items():
        u = theirs[n]
        if n.endswith("global_scale"):  # ModelOpt scalars stay 0-dim through their converter; ours are [1]
            u = u.reshape(1)
        assert u.dtype == t.dtype and torch.equal(u.view(torch.uint8), t.view(torch.uint8)), n
    qc_theirs = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    qc_ours = json.loads((ct_dir / "config.json").read_text())["quantization_config"]
    a, b = QuantizationConfig.model_validate(qc_theirs), QuantizationConfig.model_validate(qc_ours)
    assert a.format == b.format and a.ignore == b.ignore
    ga, gb = next(iter(a.config_groups.values())), next(iter(b.config_groups.values()))
    assert ga.weights == gb.weights and ga.input_activations == gb.input_activations


def test_convert_round_trips_are_byte_identical(w4a4, tmp_path):
    ct_dir, mo_dir = w4a4
    convert_checkpoint(ct_dir, tmp_path / "mo", "modelopt")
    convert_checkpoint(tmp_path / "mo", tmp_path / "ct", "compressed-tensors")
    assert _files_identical(tmp_path / "mo", mo_dir)
    assert _files_identical(tmp_path / "ct", ct_dir)
    convert_checkpoint(mo_dir, tmp_path / "ct2", "compressed-tensors")
    convert_checkpoint(tmp_path / "ct2", tmp_path / "mo2", "modelopt")
    assert _files_identical(tmp_path / "mo2", mo_dir)


def test_both_dialects_load_to_the_same_model(w4a4):
    ct_dir, mo_dir = w4a4
    a, b = load_quantized(ct_dir), load_quantized(mo_dir)
    x = torch.randint(0, 256, (2, 20))
    la, lb = a(x).logits, b(x).logits
    assert torch.isfinite(la).all() and torch.equal(la, lb)


def test_modelopt_refuses_weight_only_nvfp4(tiny_llama, tmp_path):
    with pytest.raises(ValueError, match="ModelOpt has no layout for nvfp4a16"):
        quantize_dir(tiny_llama, tmp_path, PTQConfig(scheme="nvfp4a16"), fmt="modelopt")
