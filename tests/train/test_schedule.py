import math

import pytest

from fp4lab.train.schedule import lr_at


def test_cosine_warmup_then_decay_to_min():
    lrs = [lr_at(s, lr=1.0, total_steps=100, warmup=10, min_lr_ratio=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    mid = 10 + (99 - 10) / 2
    assert lr_at(int(mid), lr=1.0, total_steps=100, warmup=10) == pytest.approx(
        0.1 + 0.45 * (1 + math.cos(math.pi * (int(mid) - 10) / 89)))


def test_wsd_constant_then_linear_decay():
    kw = dict(lr=2.0, total_steps=100, warmup=0.05, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
    assert lr_at(4, **kw) == pytest.approx(2.0)
    assert lr_at(79, **kw) == 2.0
    assert lr_at(89, **kw) == pytest.approx(1.0)
    assert lr_at(99, **kw) == pytest.approx(0.0)


def test_unknown_schedule():
    with pytest.raises(ValueError, match="wsd"):
        lr_at(50, lr=1.0, total_steps=100, warmup=0, schedule="linear")
