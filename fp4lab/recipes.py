"""Training recipes as data: which operand of which GEMM is quantized to what.

A recipe is a frozen ``RecipeConfig``; presets are instances, ablations are overrides
(``get_recipe("nvfp4:rht=false,bf16_layers=last:4")``), and TOML files hold the same keys.
What each preset stands for is written next to it (bottom of this file); the recipe itself is
NVIDIA's "Pretraining Large Language Models with NVFP4" (arXiv 2509.25149, §4).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

FORMATS = ("bf16", "fp8", "fp8-block", "mxfp4", "nvfp4")
SCALE_ORDERS = ("torchao", "te", "compressed-tensors")
MXFP4_SCALE_RULES = ("rceil", "floor")
FP8_GRAD_FORMATS = ("e5m2", "e4m3")


@dataclass(frozen=True)
class RecipeConfig:
    """How the three GEMMs of every quantized linear layer treat their operands.

    format: element format of all quantized operands ("bf16" = no quantization).
    weight_2d: weight scaled in 2D tiles (16x16 for nvfp4, 128x128 for fp8-block) so that Fprop
        and Dgrad see the same quantized W (spec §4.4). Ignored by fp8 (per-tensor) and mxfp4.
    rht: 16x16 random Hadamard transform on both Wgrad inputs, along tokens (spec §4.2);
        nvfp4 and mxfp4 only (the paper's MXFP4 run used d=32; we apply 16x16 to both).
    stochastic_rounding: SR on the output gradient going into Dgrad and Wgrad (spec §4.3);
        weights and activations always round to nearest even.
    bf16_layers: which transformer blocks keep BF16 linears: "none", "first:N", "last:N",
        "first:N+last:M", a fraction like "0.15" (= last ceil(0.15 * blocks)), or "re:<regex>"
        matched against module names.
    fp8_grad_format: element format of gradients for fp8 / fp8-block ("e5m2": more range, the
        classic hybrid FP8 recipe; "e4m3": DeepSeek-V3 / the paper's FP8 baseline).
    mxfp4_scale_rule: "rceil" rounds the E8M0 scale up (the paper, App. B.4), "floor" is OCP's.
    scale_order: NVFP4 op order for the scale arithmetic (see fp4lab.formats.nvfp4).
    seed: seeds the per-layer CPU generators that drive stochastic rounding.
    """

    name: str = "bf16"
    format: str = "bf16"
    weight_2d: bool = False
    rht: bool = False
    stochastic_rounding: bool = False
    bf16_layers: str = "none"
    fp8_grad_format: str = "e5m2"
    mxfp4_scale_rule: str = "rceil"
    scale_order: str = "torchao"
    seed: int = 0

    def __post_init__(self):
        _check_choice("format", self.format, FORMATS)
        _check_choice("fp8_grad_format", self.fp8_grad_format, FP8_GRAD_FORMATS)
        _check_choice("mxfp4_scale_rule", self.mxfp4_scale_rule, MXFP4_SCALE_RULES)
        _check_choice("scale_order", self.scale_order, SCALE_ORDERS)
        parse_bf16_layers(self.bf16_layers)  # raises on a malformed selector
        if self.rht and self.format not in ("nvfp4", "mxfp4"):
            raise ValueError(f"recipe {self.name!r}: rht=true needs format nvfp4 or mxfp4, not {self.format}")
        if self.stochastic_rounding and self.format not in ("nvfp4", "mxfp4"):
            raise ValueError(
                f"recipe {self.name!r}: stochastic_rounding=true needs format nvfp4 or mxfp4, not {self.format}"
            )

    @property
    def quantized(self) -> bool:
        return self.format != "bf16"

    @property
    def block_size(self) -> int:
        """Elements per scale along the GEMM reduction dim (1 = one scale per tensor)."""
        return {"bf16": 1, "fp8": 1, "fp8-block": 128, "mxfp4": 32, "nvfp4": 16}[self.format]

    def replace(self, **overrides) -> "RecipeConfig":
        """A copy with some fields changed; unknown keys raise with the list of valid ones."""
        _check_keys(overrides)
        return dataclasses.replace(self, **overrides)

    def spec(self) -> str:
        """The compact string that rebuilds this recipe with ``get_recipe``."""
        base = PRESETS.get(self.name)
        diffs = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "name" and (base is None or getattr(base, f.name) != value):
                diffs.append(f"{f.name}={_format_value(value)}")
        head = self.name if self.name in PRESETS else "bf16"
        return head + (":" + ",".join(diffs) if diffs else "")


def get_recipe(spec: "str | RecipeConfig | Path | dict | None") -> RecipeConfig:
    """Parse a recipe: a RecipeConfig, a preset name, "preset:key=value,...", a TOML path, or a dict.

    A TOML file holds top-level keys (``base = "nvfp4"`` picks the preset to override, default bf16)
    or a ``[recipe]`` table with the same keys.
    """
    if spec is None:
        return PRESETS["bf16"]
    if isinstance(spec, RecipeConfig):
        return spec
    if isinstance(spec, dict):
        return _from_mapping(dict(spec), where="dict")
    path = Path(spec) if isinstance(spec, Path) or str(spec).endswith(".toml") else None
    if path is not None:
        return load_toml(path)
    text = str(spec).strip()
    name, _, rest = text.partition(":")
    name = name.strip().lower()
    if name not in PRESETS:
        raise ValueError(f"unknown recipe {name!r}; presets: {', '.join(PRESETS)} (or a .toml file)")
    overrides = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"recipe {text!r}: expected key=value, got {item!r}")
        overrides[key.strip()] = _parse_value(key.strip(), value.strip())
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


def load_toml(path: "str | Path") -> RecipeConfig:
    """Read a recipe from a TOML file (see ``get_recipe``)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError as err:
            raise RuntimeError("reading TOML recipes on Python 3.10 needs `pip install tomli`") from err
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe file not found: {path}")
    with path.open("rb") as f:
        data = tomllib.load(f)
    if "recipe" in data and isinstance(data["recipe"], dict):
        data = data["recipe"]
    return _from_mapping(data, where=str(path))


def parse_bf16_layers(selector: str) -> list[tuple[str, float]]:
    """Split a bf16_layers selector into (kind, value) parts; kind in first/last/fraction/regex."""
    s = str(selector).strip()
    if s.lower() in ("none", ""):
        return []
    if s.startswith("re:"):
        try:
            re.compile(s[3:])
        except re.error as err:
            raise ValueError(f"bf16_layers {s!r}: bad regex: {err}") from err
        return [("regex", s[3:])]
    parts = []
    for part in s.split("+"):
        kind, colon, n = part.strip().partition(":")
        try:
            if not colon:
                frac = float(kind)
                if not 0.0 <= frac <= 1.0:
                    raise ValueError
                parts.append(("fraction", frac))
            elif kind in ("first", "last") and int(n) >= 0:
                parts.append((kind, int(n)))
            else:
                raise ValueError
        except ValueError:
            raise ValueError(
                f"bf16_layers {selector!r}: expected none, first:N, last:N, first:N+last:M, "
                "a fraction in [0, 1] (last blocks), or re:<regex>"
            ) from None
    return parts


def describe_recipes(specs: "list[str] | None" = None) -> str:
    """Text table of recipes (all presets by default): their knobs and the spec string that rebuilds them."""
    recipes = [get_recipe(s) for s in specs] if specs else list(PRESETS.values())
    keys = [f.name for f in dataclasses.fields(RecipeConfig) if f.name not in ("name", "seed", "scale_order")]
    rows = [["recipe", *keys]] + [[r.spec(), *(_format_value(getattr(r, k)) for k in keys)] for r in recipes]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def _from_mapping(data: dict, where: str) -> RecipeConfig:
    base = str(data.pop("base", data.get("name", "bf16")))
    if base not in PRESETS:
        raise ValueError(f"{where}: unknown base recipe {base!r}; presets: {', '.join(PRESETS)}")
    overrides = {k: _parse_value(k, v) if isinstance(v, str) else v for k, v in data.items() if k != "name"}
    return PRESETS[base].replace(**overrides)


def _check_keys(overrides: dict) -> None:
    valid = [f.name for f in dataclasses.fields(RecipeConfig) if f.name != "name"]
    unknown = [k for k in overrides if k not in valid]
    if unknown:
        raise ValueError(f"unknown recipe key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(valid)}")


def _parse_value(key: str, value: str):
    _check_keys({key: value})
    kind = {f.name: f.type for f in dataclasses.fields(RecipeConfig)}[key]
    if kind in ("bool", bool):
        low = value.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"recipe key {key}: expected true/false, got {value!r}")
    if kind in ("int", int):
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"recipe key {key}: expected an integer, got {value!r}") from None
    return value


def _format_value(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _check_choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"recipe key {key}={value!r}: expected one of {', '.join(choices)}")


# Paper §4 / App. A: the NVFP4 recipe keeps ~15% of the blocks (mostly the last ones) in BF16.
PRESETS: dict[str, RecipeConfig] = {
    "bf16": RecipeConfig(name="bf16"),
    # Per-tensor current scaling; E4M3 activations and weights, E5M2 gradients (TE's HYBRID).
    "fp8": RecipeConfig(name="fp8", format="fp8"),
    # The paper's FP8 baseline (DeepSeek-V3 style): 1x128 activations/gradients, 128x128 weights,
    # E4M3 everywhere. The paper's 12B run also kept the first block and the last 2 blocks in BF16;
    # add bf16_layers=first:1+last:2 to reproduce that.
    "fp8-block": RecipeConfig(name="fp8-block", format="fp8-block", weight_2d=True, fp8_grad_format="e4m3"),
    # The paper's MXFP4 comparison (§5): block 32, E8M0 scales rounded up, same RHT/SR/BF16 layers.
    "mxfp4": RecipeConfig(name="mxfp4", format="mxfp4", rht=True, stochastic_rounding=True, bf16_layers="0.15"),
    # The paper's recipe (§4): 2D weights, 1x16 activations/gradients, RHT on Wgrad, SR on gradients.
    "nvfp4": RecipeConfig(
        name="nvfp4", format="nvfp4", weight_2d=True, rht=True, stochastic_rounding=True, bf16_layers="0.15"
    ),
}
