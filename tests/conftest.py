"""Test-session setup shared by every test file.

TRITON_INTERPRET is read when a @triton.jit kernel is decorated, so it must be set before any
nucleotron.kernels module is imported: on a machine without CUDA the Triton kernels then run in the interpreter.
"""
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run the suite on a GPU machine to include it)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
