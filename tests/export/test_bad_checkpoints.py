"""Every corrupt checkpoint is refused with a message that names the tensor."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from fp4lab.export import load_quantized
from fp4lab.ptq.quantize import PTQConfig, quantize_dir

L = "model.layers.0.self_attn.o_proj"


@pytest.fixture(scope="module")
def good(tiny_llama, calib_ids, tmp_path_factory):
    cfg = PTQConfig(scheme="nvfp4", calib_samples=4, calib_len=32)
    return {fmt: quantize_dir(tiny_llama, tmp_path_factory.mktemp(fmt), cfg, calib_ids=calib_ids, fmt=fmt)
            for fmt in ("compressed-tensors", "modelopt")}


def _corrupt(src, dst, edit):
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


CT_CASES = {
    "missing scale": (lambda t: t.pop(f"{L}.weight_scale"), f"missing tensor {L}.weight_scale"),
    "missing global": (lambda t: t.pop(f"{L}.weight_global_scale"), f"missing tensor {L}.weight_global_scale"),
    "missing input": (lambda t: t.pop(f"{L}.input_global_scale"), f"missing tensor {L}.input_global_scale"),
    "nan block scale": (lambda t: t[f"{L}.weight_scale"].view(torch.uint8).view(-1).__setitem__(5, 0x7F),
                        f"{L}.weight_scale has a NaN block scale"),
    "zero global": (lambda t: t[f"{L}.weight_global_scale"].zero_(), f"global scale {L}.weight_global_scale = 0"),
    "nan global": (lambda t: t[f"{L}.weight_global_scale"].fill_(float("nan")), f"{L}.weight_global_scale = nan"),
    "scale shape": (lambda t: t.__setitem__(f"{L}.weight_scale", t[f"{L}.weight_scale"][:, :2].contiguous()),
                    f"{L}.weight_scale has shape"),
    "packed shape": (lambda t: [t.__setitem__(f"{L}.weight_packed", t[f"{L}.weight_packed"][:, :16].contiguous()),
                                t.__setitem__(f"{L}.weight_scale", t[f"{L}.weight_scale"][:, :2].contiguous())],
                     f"{L}.weight_packed of shape"),
    "inverted global": (lambda t: t.__setitem__(f"{L}.weight_global_scale", 1 / t[f"{L}.weight_global_scale"]),
                        f"{L}.weight_global_scale = .* looks inverted"),
    "inverted input": (lambda t: t.__setitem__(f"{L}.input_global_scale", 1 / t[f"{L}.input_global_scale"]),
                       f"{L}.input_global_scale = .* looks inverted"),
    "wrong dtype": (lambda t: t.__setitem__(f"{L}.weight_scale", t[f"{L}.weight_scale"].float()),
                    f"{L}.weight_scale has dtype torch.float32"),
    "orphan scale": (lambda t: t.__setitem__("model.layers.0.mlp.foo.weight_scale", torch.ones(1)),
                     "without a quantized weight"),
}
MO_CASES = {
    "missing scale_2": (lambda t: t.pop(f"{L}.weight_scale_2"), f"missing tensor {L}.weight_scale_2"),
    "missing input": (lambda t: t.pop(f"{L}.input_scale"), f"missing tensor {L}.input_scale"),
    "zero scale_2": (lambda t: t[f"{L}.weight_scale_2"].zero_(), f"global scale {L}.weight_scale_2 = 0"),
    "inverted scale_2": (lambda t: t.__setitem__(f"{L}.weight_scale_2", 1 / t[f"{L}.weight_scale_2"]),
                         f"{L}.weight_scale_2 = .* looks inverted"),
    "nan block scale": (lambda t: t[f"{L}.weight_scale"].view(torch.uint8).view(-1).__setitem__(0, 0xFF),
                        f"{L}.weight_scale has a NaN block scale"),
}


@pytest.mark.parametrize("case", sorted(CT_CASES))
def test_bad_compressed_tensors_checkpoint(good, tmp_path, case):
    edit, msg = CT_CASES[case]
    d = _corrupt(good["compressed-tensors"], tmp_path / "bad", edit)
    with pytest.raises(ValueError, match=msg):
        load_quantized(d)


@pytest.mark.parametrize("case", sorted(MO_CASES))
def test_bad_modelopt_checkpoint(good, tmp_path, case):
    edit, msg = MO_CASES[case]
    d = _corrupt(good["modelopt"], tmp_path / "bad", edit)
    with pytest.raises(ValueError, match=msg):
        load_quantized(d)


def test_missing_unquantized_tensor_and_unknown_config(good, tmp_path):
    d = _corrupt(good["compressed-tensors"], tmp_path / "a", lambda t: t.pop("model.norm.weight"))
    with pytest.raises(ValueError, match="missing tensor.*model.norm.weight"):
        load_quantized(d)
    d = tmp_path / "b"
    shutil.copytree(good["compressed-tensors"], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"]["config_groups"]["group_0"]["weights"]["group_size"] = 64
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported compressed-tensors scheme"):
        load_quantized(d)


def test_good_checkpoints_load(good):
    for d in good.values():
        assert torch.isfinite(load_quantized(d)(torch.randint(0, 256, (1, 8))).logits).all()
