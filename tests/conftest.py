"""Shared test setup.

Without a GPU, Triton kernels run under the CPU interpreter, which must be switched on before
any kernel module is imported (``triton.jit`` reads TRITON_INTERPRET at decoration time).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
