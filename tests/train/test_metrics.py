import math

from fp4lab.train.metrics import DivergenceMonitor, MetricsLog, read_metrics


def test_divergence_events():
    m = DivergenceMonitor(spike_threshold=0.5, window=4)
    assert all(m.check(2.0, 1.0) == [] for _ in range(4))
    assert m.check(2.9, 1.0) == []  # below (1 + 0.5) x 2.0
    kinds = [e["kind"] for e in m.check(3.5, 1.0)]
    assert kinds == ["loss_spike"]
    assert [e["kind"] for e in m.check(math.nan, math.inf)] == ["nonfinite_loss", "nonfinite_grad"]
    assert [e["kind"] for e in m.check(2.0, math.nan)] == ["nonfinite_grad"]
    # the window carries over a resume
    again = DivergenceMonitor(0.5, window=4, history=m.state())
    assert again.state() == m.state()


def test_metrics_log_drops_rows_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path, resume_step=None)
    for step in range(1, 6):
        log.write({"type": "train", "step": step})
    log.close()
    with open(path, "a") as f:
        f.write('{"type": "train", "st')  # torn line of a killed process
    log = MetricsLog(path, resume_step=3)
    log.close()
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]


def test_read_metrics_falls_back_to_xz(tmp_path):
    import json
    import lzma

    rows = [{"type": "train", "step": i, "loss": 1.0 / (i + 1)} for i in range(5)]
    text = "\n".join(json.dumps(r) for r in rows) + "\n{\"torn"
    (tmp_path / "metrics.jsonl.xz").write_bytes(lzma.compress(text.encode()))
    assert read_metrics(tmp_path / "metrics.jsonl") == rows
    (tmp_path / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n")  # the plain file wins
    assert read_metrics(tmp_path / "metrics.jsonl") == rows[:1]
    assert read_metrics(tmp_path / "other.jsonl") == []
