"""--resume continues bit-identically: after SIGKILL (subprocess) and for a stochastic-rounding recipe."""
import os
import signal
import subprocess
import time

import pytest
import torch

from tests.train.conftest import FAST, fp4lab_cmd, metric_rows, run_cli

STEPS = 24


def _curve(run):
    train = [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in metric_rows(run, "train")]
    val = [(r["step"], r["val_loss"]) for r in metric_rows(run, "val")]
    return train, val


def test_resume_after_sigkill_is_bit_identical(tmp_path, data_dir):
    # with dropout, so the checkpointed RNG state decides the masks after the resume
    args = [*FAST, "--data", data_dir, "--steps", STEPS, "--ckpt-every", 4, "--eval-every", 8, "--dropout", 0.1]
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_cli("train", *args, "--out", full)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(fp4lab_cmd("train", *args, "--out", killed), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        # kill between checkpoints once a few have been written
        while time.time() < deadline:
            rows = metric_rows(killed, "train") if (killed / "metrics.jsonl").exists() else []
            if rows and rows[-1]["step"] >= 9 and rows[-1]["step"] % 4 != 0:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "final.json").exists()
    rows_at_kill = metric_rows(killed, "train")[-1]["step"]
    assert 9 <= rows_at_kill < STEPS

    run_cli("train", *args, "--out", killed, "--resume")
    assert _curve(killed) == _curve(full)  # exact float equality, every step
    assert len(_curve(full)[0]) == STEPS


def test_resume_with_stochastic_rounding_recipe_and_switch(tmp_path, data_dir, restore_threads):
    """nvfp4 draws stochastic-rounding noise from per-layer seed states; they are checkpointed too.
    The run switches its forward pass to bf16 at half time and is resumed after the switch."""
    pytest.importorskip("fp4lab.nn")
    from fp4lab.train import TrainConfig, train

    torch.set_num_threads(1)  # the emulated formats are many small ops; 1 thread is faster on 2 cores
    cfg = dict(preset="tiny", recipe="nvfp4", data=str(data_dir), steps=4, batch_size=2, seq_len=16,
               eval_every=2, eval_batches=1, ckpt_every=1, save_model=False, progress=False,
               switch_at=0.5, switch_to="bf16", forward_only=True)
    train(TrainConfig(out=str(tmp_path / "full"), **cfg))
    train(TrainConfig(out=str(tmp_path / "split"), max_steps=3, **cfg))
    train(TrainConfig(out=str(tmp_path / "split"), resume=True, **cfg))
    assert _curve(tmp_path / "split") == _curve(tmp_path / "full")
    switches = [e for e in metric_rows(tmp_path / "full", "event") if e["kind"] == "recipe_switch"]
    assert [(e["step"], e["value"]) for e in switches] == [(2, "bf16")]


def test_each_run_seed_gets_its_own_stochastic_rounding_stream():
    from fp4lab.models import build_model
    from fp4lab.train.precision import apply_recipe

    def first_draw(sr_seed):
        model = apply_recipe(build_model("tiny", 256, 0), "nvfp4", sr_seed)
        layer = next(m for m in model.modules() if type(m).__name__ == "QuantLinear" and m.recipe.quantized)
        return int(layer.sr_state)

    assert first_draw(1) == first_draw(1)
    assert first_draw(1) != first_draw(2)


def test_checkpointed_sr_states_round_trip_and_old_ones_warn():
    from fp4lab.models import build_model
    from fp4lab.train.precision import apply_recipe, generator_states, set_generator_states

    model = apply_recipe(build_model("tiny", 256, 0), "nvfp4", 1)
    states = generator_states(model)
    assert states and all(isinstance(v, int) for v in states.values())
    name = next(iter(states))
    set_generator_states(model, {name: 12345})
    assert generator_states(model)[name] == 12345
    with pytest.warns(UserWarning, match="not bit-identical"):  # a CPU Generator state, as fp4lab wrote before
        set_generator_states(model, {name: torch.Generator().get_state()})
    with pytest.raises(ValueError, match="lacks"):
        set_generator_states(model, {"no.such.layer": 1})
