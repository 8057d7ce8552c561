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


@pytest.fixture(scope="session")
def train_pack(tmp_path_factory):
    """The tiny two-group pack (seq_len 128, valid split chr20) that the training tests share."""
    from train_runs import make_pack

    return make_pack(tmp_path_factory.mktemp("train-data"))


@pytest.fixture(scope="session")
def straight_run(train_pack, tmp_path_factory):
    """The uninterrupted 8-step tiny run every resumed or repaired run must reproduce bit for bit."""
    from train_runs import run_train

    run_dir = tmp_path_factory.mktemp("straight") / "run"
    run_train(train_pack, run_dir)
    return run_dir


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run the suite on a GPU machine to include it)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
