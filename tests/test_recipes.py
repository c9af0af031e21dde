"""Recipes as data: presets, the compact string syntax, TOML, and clear errors."""
import dataclasses

import pytest

from fp4lab.recipes import PRESETS, RecipeConfig, get_recipe, parse_bf16_layers


def test_presets_carry_the_paper_knobs():
    nv = get_recipe("nvfp4")
    assert (nv.format, nv.weight_2d, nv.rht, nv.stochastic_rounding, nv.bf16_layers) == ("nvfp4", True, True, True, "0.15")
    assert nv.block_size == 16
    mx = get_recipe("mxfp4")
    assert (mx.format, mx.block_size, mx.mxfp4_scale_rule, mx.weight_2d) == ("mxfp4", 32, "rceil", False)
    fp8 = get_recipe("fp8")
    assert (fp8.format, fp8.fp8_grad_format) == ("fp8", "e5m2")
    blk = get_recipe("fp8-block")
    assert (blk.block_size, blk.weight_2d, blk.fp8_grad_format) == (128, True, "e4m3")
    assert not get_recipe("bf16").quantized
    assert set(PRESETS) == {"bf16", "fp8", "fp8-block", "mxfp4", "nvfp4"}


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_recipe("nvfp4").rht = False


def test_string_overrides_and_spec_round_trip():
    r = get_recipe("nvfp4:rht=false,bf16_layers=last:4, stochastic_rounding=off")
    assert (r.rht, r.stochastic_rounding, r.bf16_layers, r.weight_2d) == (False, False, "last:4", True)
    assert r.spec() == "nvfp4:rht=false,stochastic_rounding=false,bf16_layers=last:4"
    assert get_recipe(r.spec()) == r
    assert get_recipe("NVFP4") == PRESETS["nvfp4"]
    assert get_recipe(get_recipe("fp8")) is get_recipe("fp8")
    assert get_recipe({"base": "nvfp4", "seed": 3}).seed == 3


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match=r"unknown recipe key\(s\) 'rhtt'.*valid keys: .*stochastic_rounding"):
        get_recipe("nvfp4:rhtt=false")
    with pytest.raises(ValueError, match="unknown recipe 'nvfp5'"):
        get_recipe("nvfp5")
    with pytest.raises(ValueError, match="key=value"):
        get_recipe("nvfp4:rht")
    with pytest.raises(ValueError, match="true/false"):
        get_recipe("nvfp4:rht=maybe")
    with pytest.raises(ValueError, match="integer"):
        get_recipe("nvfp4:seed=x")
    with pytest.raises(ValueError, match="format"):
        RecipeConfig(format="int4")
    with pytest.raises(ValueError, match="rht=true needs"):
        get_recipe("fp8:rht=true")


def test_toml(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text('base = "nvfp4"\nrht = false\nbf16_layers = "first:2+last:8"\nseed = 7\n')
    r = get_recipe(p)
    assert (r.format, r.rht, r.bf16_layers, r.seed) == ("nvfp4", False, "first:2+last:8", 7)
    assert get_recipe(str(p)) == r
    q = tmp_path / "t.toml"
    q.write_text('[recipe]\nbase = "mxfp4"\nmxfp4_scale_rule = "floor"\n')
    assert get_recipe(q).mxfp4_scale_rule == "floor"
    bad = tmp_path / "bad.toml"
    bad.write_text('base = "nvfp4"\nrth = true\n')
    with pytest.raises(ValueError, match="rth"):
        get_recipe(bad)
    with pytest.raises(FileNotFoundError):
        get_recipe(tmp_path / "missing.toml")


@pytest.mark.parametrize("sel,parts", [
    ("none", []), ("last:4", [("last", 4)]), ("first:2+last:8", [("first", 2), ("last", 8)]),
    ("0.15", [("fraction", 0.15)]), ("re:mlp", [("regex", "mlp")]),
])
def test_bf16_layer_selectors(sel, parts):
    assert parse_bf16_layers(sel) == parts


@pytest.mark.parametrize("sel", ["last", "middle:3", "1.5", "last:-1", "re:("])
def test_bad_bf16_layer_selectors(sel):
    with pytest.raises(ValueError, match="bf16_layers"):
        get_recipe(f"nvfp4:bf16_layers={sel}")


def test_cli_lists_presets_and_rejects_unknown_keys(capsys):
    from fp4lab.cli import main

    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PRESETS) and "stochastic_rounding" in out
    assert main(["recipes", "nvfp4:rht=false"]) == 0
    assert "nvfp4:rht=false" in capsys.readouterr().out
    assert main(["recipes", "nvfp4:rhtt=1"]) == 2
    assert "valid keys" in capsys.readouterr().err
