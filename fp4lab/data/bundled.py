"""The bundled tinyshakespeare corpus, prepared once (byte tokens) into a cache directory."""
from __future__ import annotations

import json
import os
from pathlib import Path

BUNDLED_CORPUS = Path(__file__).with_name("tinyshakespeare.txt.xz")
BUNDLED_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def cache_dir() -> Path:
    """$FP4LAB_CACHE, else $XDG_CACHE_HOME/fp4lab, else ~/.cache/fp4lab."""
    if os.environ.get("FP4LAB_CACHE"):
        return Path(os.environ["FP4LAB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fp4lab"


def default_data_dir() -> Path:
    """Prepared tinyshakespeare (byte tokenizer, 90/10 split); prepared on first use."""
    from fp4lab.data.prepare import prepare_corpus

    out = cache_dir() / "data" / "tinyshakespeare-byte"
    meta = out / "meta.json"
    if meta.is_file():
        sources = json.loads(meta.read_text()).get("sources", [])
        if sources and sources[0].get("sha256") == BUNDLED_SHA256:
            return out
    meta_now = prepare_corpus([BUNDLED_CORPUS], out, tokenizer="byte", val_fraction=0.1)
    if meta_now["sources"][0]["sha256"] != BUNDLED_SHA256:
        raise RuntimeError(f"bundled corpus {BUNDLED_CORPUS} does not match its recorded SHA-256")
    return out
