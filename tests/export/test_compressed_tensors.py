"""Our checkpoints against the compressed-tensors library itself (the independent implementation)."""
import json

import pytest
import torch
from safetensors.torch import load_file

from fp4lab.export import load_quantized
from fp4lab.export.dialects import read_checkpoint
from fp4lab.ptq.quantize import PTQConfig, quantize_dir

ct = pytest.importorskip("compressed_tensors")
from compressed_tensors.quantization import QuantizationConfig  # noqa: E402


def _same_bits(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.view(torch.int16), b.view(torch.int16))


@pytest.fixture(scope="module")
def ct_dirs(tiny_llama, calib_ids, tmp_path_factory):
    out = {}
    for scheme, method, fos in [("nvfp4a16", "rtn", False), ("nvfp4", "rtn", False), ("nvfp4a16", "gptq", True),
                                ("mxfp4", "rtn", False), ("fp8", "rtn", False)]:
        d = tmp_path_factory.mktemp(f"ct_{scheme}_{method}_{fos}")
        cfg = PTQConfig(scheme=scheme, method=method, four_over_six=fos, calib_samples=8, calib_len=64)
        out[(scheme, method, fos)] = quantize_dir(tiny_llama, d, cfg, calib_ids=calib_ids)
    return out


def _ct_scheme(d):
    qc = json.loads((d / "config.json").read_text())["quantization_config"]
    config = QuantizationConfig.model_validate(qc)  # the library's own schema accepts our config
    return config, config.config_groups["group_0"]


@pytest.mark.parametrize("key", [("nvfp4a16", "rtn", False), ("nvfp4", "rtn", False), ("nvfp4a16", "gptq", True)])
def test_nvfp4_decompresses_bit_exactly_with_compressed_tensors(ct_dirs, tiny_llama, key):
    from compressed_tensors.compressors.nvfp4 import NVFP4PackedCompressor

    from fp4lab.export.scales import exportable_amax
    from fp4lab.formats import quantize_nvfp4

    d = ct_dirs[key]
    _, scheme = _ct_scheme(d)
    tensors = load_file(str(d / "model.safetensors"))
    original = load_file(str(tiny_llama / "model.safetensors"))
    ckpt, fmt = read_checkpoint(d)
    assert fmt == "compressed-tensors" and len(ckpt.layers) == 14
    for name, pw in ckpt.layers.items():
        state = {p: tensors[f"{name}.{p}"] for p in ("weight_packed", "weight_scale", "weight_global_scale")}
        theirs = NVFP4PackedCompressor.decompress(state, scheme)["weight"]
        ours = pw.to_formats().dequantize(torch.bfloat16)  # fp4lab.formats' decode of the same tensor
        assert _same_bits(theirs, ours), name
        if key[1] == "rtn":
            # and the codes/scales are exactly fp4lab.formats' compressed-tensors quantization of the weight
            t = quantize_nvfp4(original[f"{name}.weight"], global_amax=pw.to_formats().global_amax,
                               scale_order="compressed-tensors")
            assert torch.equal(t.codes, pw.data)
            assert torch.equal(t.scales.view(torch.uint8), pw.scales.view(torch.uint8))
            assert float(t.global_amax) >= float(original[f"{name}.weight"].float().abs().amax())
            assert torch.equal(t.global_amax, exportable_amax(t.global_amax))


def test_transformers_loads_our_checkpoint_through_compressed_tensors(ct_dirs):
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    d = ct_dirs[("nvfp4a16", "gptq", True)]
    theirs = AutoModelForCausalLM.from_pretrained(d, quantization_config=CompressedTensorsConfig(dequantize=True),
                                                  dtype=torch.bfloat16)
    ours = load_quantized(d, use_kernel=False)
    for name, _ in read_checkpoint(d)[0].layers.items():
        assert _same_bits(theirs.get_submodule(name).weight.data, ours.get_submodule(name).weight.data), name
    x = torch.randint(0, 256, (1, 24))
    assert torch.equal(theirs(x).logits, ours(x).logits)


def test_mxfp4_and_fp8_decompress_with_compressed_tensors(ct_dirs):
    from compressed_tensors.compressors import BaseCompressor

    for key in [("mxfp4", "rtn", False), ("fp8", "rtn", False)]:
        d = ct_dirs[key]
        config, scheme = _ct_scheme(d)
        compressor = BaseCompressor.load_from_registry(config.format)
        tensors = load_file(str(d / "model.safetensors"))
        ckpt, _ = read_checkpoint(d)
        for name, pw in ckpt.layers.items():
            names = compressor.compression_param_names(scheme)
            state = {p: tensors[f"{name}.{p}"] for p in names if f"{name}.{p}" in tensors}
            theirs = compressor.decompress(state, scheme)["weight"]
            ours = pw.dequantize(theirs.dtype)
            assert torch.equal(theirs, ours), (key, name)
            if key[0] == "mxfp4":  # and fp4lab.formats reads it the same way
                assert torch.equal(pw.to_formats().dequantize(theirs.dtype), theirs)


def test_w4a4_activation_quantization_matches_compressed_tensors_in_fp32():
    """Our static-global / dynamic-block input quantizer = compressed-tensors' own, on fp32 activations.

    (On BF16 activations compressed-tensors does the scale arithmetic in BF16 (spec §2.5), we in fp32,
    as fp4lab.formats and the GPU kernels do, so ~1-2% of elements differ by one code.)"""
    from compressed_tensors.quantization import QuantizationStatus
    from compressed_tensors.quantization.lifecycle.forward import forward_quantize
    from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES

    from fp4lab.export.checkpoint import PackedWeight
    from fp4lab.export.load import input_quantizer
    from fp4lab.export.scales import ct_encode_scale, exportable_amax

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 256, generator=g) * torch.exp(torch.randn(64, 1, generator=g))
    G = ct_encode_scale(exportable_amax(x.abs().amax() * 0.9))  # static scale below the data: saturation too
    m = torch.nn.Linear(256, 8)
    m.input_global_scale = torch.nn.Parameter(G.reshape(1), requires_grad=False)
    m.quantization_status = QuantizationStatus.FROZEN
    theirs = forward_quantize(m, x, "input", PRESET_SCHEMES["NVFP4"]["input_activations"])
    ours = input_quantizer(PackedWeight("nvfp4", None, None, None, G))(m, (x,))[0]
    assert torch.equal(theirs, ours)
