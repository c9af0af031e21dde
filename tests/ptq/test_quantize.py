"""Every scheme and method runs end to end on CPU: quantize a tiny model, write, load back, run."""
import pytest
import torch

from fp4lab.export import load_quantized
from fp4lab.export.dialects import read_checkpoint
from fp4lab.ptq.quantize import PTQConfig, quantize_dir

CASES = [("nvfp4a16", "rtn", False), ("nvfp4a16", "rtn", True), ("nvfp4a16", "gptq", False),
         ("nvfp4", "rtn", False), ("nvfp4", "gptq", True), ("mxfp4", "rtn", False), ("mxfp4", "gptq", False),
         ("fp8", "rtn", False), ("fp8", "gptq", False)]


@pytest.mark.parametrize("scheme,method,fos", CASES)
def test_every_scheme_and_method_runs(tiny_llama, calib_ids, tmp_path, scheme, method, fos):
    cfg = PTQConfig(scheme=scheme, method=method, four_over_six=fos, calib_samples=4, calib_len=32)
    out = quantize_dir(tiny_llama, tmp_path, cfg, calib_ids=calib_ids)
    ckpt, fmt = read_checkpoint(out)
    assert ckpt.scheme == scheme and len(ckpt.layers) == 14 and ckpt.ignore == ["lm_head"]
    bf16 = load_quantized(tiny_llama)
    q = load_quantized(out)
    x = torch.randint(0, 256, (1, 16))
    ref, got = bf16(x).logits.float(), q(x).logits.float()
    assert torch.isfinite(got).all()
    # quantization changes the output, but not beyond recognition
    rel = (got - ref).norm() / ref.norm()
    assert 0 < rel < 0.5, rel


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_other_families(family, calib_ids, tmp_path, tiny_model_factory):
    d = tiny_model_factory(tmp_path / family, family)
    out = quantize_dir(d, tmp_path / "q", PTQConfig(scheme="nvfp4", method="gptq", calib_samples=4, calib_len=32),
                       calib_ids=calib_ids)
    assert torch.isfinite(load_quantized(out)(torch.randint(0, 256, (1, 8))).logits).all()


def test_calibration_is_required_and_ignore_works(tiny_llama, calib_ids, tmp_path):
    with pytest.raises(ValueError, match="needs static activation scales"):
        quantize_dir(tiny_llama, tmp_path / "a", PTQConfig(scheme="nvfp4"))
    with pytest.raises(ValueError, match="GPTQ needs a Hessian"):
        quantize_dir(tiny_llama, tmp_path / "b", PTQConfig(method="gptq"))
    with pytest.raises(ValueError, match="NVFP4 schemes only"):
        PTQConfig(scheme="fp8", four_over_six=True)
    out = quantize_dir(tiny_llama, tmp_path / "c", PTQConfig(ignore=("lm_head", r"\.mlp\.")))
    ckpt, _ = read_checkpoint(out)
    assert len(ckpt.layers) == 8 and all("mlp" not in n for n in ckpt.layers)
    assert "model.layers.0.mlp.up_proj.weight" in ckpt.tensors
    with pytest.raises(ValueError, match="already quantized"):
        quantize_dir(out, tmp_path / "d", PTQConfig())
