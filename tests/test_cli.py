import subprocess
import sys


def test_help_works():
    out = subprocess.run([sys.executable, "-m", "fp4lab", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage: fp4lab" in out.stdout


def test_version():
    out = subprocess.run([sys.executable, "-m", "fp4lab", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("fp4lab ")


def test_describe_prints_the_table_without_third_party_noise():
    # transformers imports torchao (a test extra); on a CPU-only torch torchao logs one "Failed to load"
    # warning per CUDA extension, which the CLI must not pass on to a user who never asked for torchao
    out = subprocess.run([sys.executable, "-m", "fp4lab", "describe", "--model", "tiny", "--recipe", "nvfp4"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "linear layers quantized" in out.stdout
    assert "Failed to load" not in out.stdout + out.stderr
    assert "register_constant" not in out.stdout + out.stderr  # torch's deprecation note on torchao's pytrees
