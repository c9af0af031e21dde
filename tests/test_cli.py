import subprocess
import sys


def test_help_works():
    out = subprocess.run([sys.executable, "-m", "fp4lab", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage: fp4lab" in out.stdout


def test_version():
    out = subprocess.run([sys.executable, "-m", "fp4lab", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("fp4lab ")
