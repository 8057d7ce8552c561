"""Run a function in N fresh gloo processes (spawned, so megatron's global state never leaks between tests)."""
from __future__ import annotations

import os
import pickle
import socket
import tempfile
from pathlib import Path

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank, world_size, port, out_dir, fn, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    # Gengram takes its PyTorch path, as a CPU training run does: only the kernel's own tests run the interpreter.
    os.environ.pop("TRITON_INTERPRET", None)
    result = fn(*args)
    Path(out_dir, f"rank{rank}.pkl").write_bytes(pickle.dumps(result))


def run_distributed(world_size: int, fn, *args):
    """fn(*args) on every rank; returns the per-rank results in rank order (fn must be importable by name)."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(_entry, args=(world_size, free_port(), out_dir, fn, args), nprocs=world_size,
                           join=True, start_method="spawn")
        return [pickle.loads(Path(out_dir, f"rank{r}.pkl").read_bytes()) for r in range(world_size)]
