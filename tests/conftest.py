"""Test-session setup shared by every test file.

TRITON_INTERPRET is read when a @triton.jit kernel is decorated, so it must be set before any
nucleotron.kernels module is imported: on a machine without CUDA the Triton kernels then run in the interpreter.
"""
import importlib
import os
import pkgutil
import shutil
import sys
from pathlib import Path

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from nucleotron.configs.cores import usable_cores  # noqa: E402

# pytest-xdist runs one worker per core: each worker (and every process it starts without its own setting) gets its
# share of the cores. With torch's default of one thread per core in every worker, the busy-waiting OpenMP threads
# oversubscribed the cores and ran the in-process compute tests several times slower (one: 16 s alone, 94-134 s in CI).
_XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _XDIST_WORKERS > 1:
    _THREADS = max(1, usable_cores() // _XDIST_WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
    torch.set_num_threads(_THREADS)


# The kernel's own tests: the only ones that run the Triton interpreter on CPU.
KERNEL_TEST_MODULES = ("test_kmer_kernel", "test_gengram_module", "test_gengram_projected", "test_benchmarks")


@pytest.fixture(autouse=True)
def gengram_torch_path_outside_kernel_tests(request, monkeypatch):
    """Everything but the kernel's own tests (model builds, equivalence and inference tests) takes Gengram's
    PyTorch path on CPU, as a CPU training run does: the interpreter is ~10-20x slower and its numerics are the
    kernel tests' business."""
    if HAS_CUDA or request.module.__name__.rsplit(".", 1)[-1] in KERNEL_TEST_MODULES:
        return
    import nucleotron.kernels

    for info in pkgutil.iter_modules(nucleotron.kernels.__path__, "nucleotron.kernels."):
        importlib.import_module(info.name)
    for name, module in list(sys.modules.items()):
        if name.startswith("nucleotron.kernels") and isinstance(getattr(module, "INTERPRETING", None), bool):
            monkeypatch.setattr(module, "INTERPRETING", False)


RENDEZVOUS_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def no_rendezvous_leftovers():
    """An in-process init_distributed sets RANK/WORLD_SIZE/MASTER_PORT in os.environ; later tests that start
    `nucleotron` processes (srun tasks read RANK) must not inherit them."""
    before = {name: os.environ.get(name) for name in RENDEZVOUS_VARIABLES}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def restore_process_state():
    """For modules that build megatron models in this process (single_process_megatron, an in-process engine): they
    set RANK, WORLD_SIZE, MASTER_PORT ... and torch's thread count; the next module gets them back as they were."""
    env, threads = dict(os.environ), torch.get_num_threads()
    yield
    os.environ.clear()
    os.environ.update(env)
    torch.set_num_threads(threads)


def built_once(tmp_path_factory, name: str, build) -> Path:
    """build(directory) once per test session, also across pytest-xdist's worker processes: the first worker to ask
    builds it in the session's shared temporary root under a file lock, the others wait and reuse it."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' temporary roots are siblings under one per-session directory
    directory = root / name
    with FileLock(str(directory) + ".lock"):
        if not (directory / ".built").exists():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            build(directory)
            (directory / ".built").touch()
    return directory


@pytest.fixture(scope="session")
def pack(tmp_path_factory):
    """The tiny two-group pack (seq_len 128, valid split chr20) that the training tests share (read-only)."""
    from train_runs import make_pack

    return built_once(tmp_path_factory, "train-data", make_pack) / "pack"


@pytest.fixture(scope="session")
def straight(pack, tmp_path_factory):
    """The uninterrupted 8-step tiny run every resumed or repaired run must reproduce bit for bit (read-only: copy
    it before changing anything in it)."""
    from train_runs import run_train

    return built_once(tmp_path_factory, "straight", lambda directory: run_train(pack, directory / "run")) / "run"


# The slowest modules (they start training processes or a Slurm job), slowest first. pytest-xdist (`-n auto --dist
# loadfile`, pyproject.toml) hands whole modules to its workers in collection order, so starting with these keeps
# every worker busy to the end instead of leaving one long module for last.
SLOW_MODULES = ("test_launch_e2e", "test_train_reliability", "test_train", "test_focus_train", "test_quickstart",
                "test_hnet_score", "test_infer_trained", "test_hnet_resume", "test_analyze", "test_megatron_cpu",
                "test_hnet_deepspeed", "test_kmer_kernel", "test_gengram_projected", "test_benchmarks")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_MODULES)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1], len(rank)))  # stable
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run the suite on a GPU machine to include it)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
