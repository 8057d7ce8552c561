"""Run a function on N gloo ranks in worker processes that stay up between tests.

Starting a process that imports torch and megatron-core costs seconds of CPU, more than most of these tests' work,
so each world size keeps one set of worker processes per test session and hands it one job after another. A job
starts its own process group on a fresh port and must destroy it (and megatron's parallel state) before returning,
as every worker in tests/megatron_workers.py does (`destroy_distributed()`). A job that raises, dies or times out
takes its workers down with it; the next call starts fresh ones. `fresh=True` runs one job in new processes, for
code that keeps global state of its own across a destroy (DeepSpeed's communication backend).
"""
from __future__ import annotations

import atexit
import os
import pickle
import queue
import socket
import tempfile
import traceback
from pathlib import Path
from typing import Dict, List

import torch.multiprocessing as mp

JOB_TIMEOUT_S = 600
# What every worker imports, loaded once in multiprocessing's fork server so that a worker set (and each fresh=True
# job) starts in well under a second instead of ~10 s of CPU. Not nucleotron.kernels: a worker imports those after
# dropping TRITON_INTERPRET.
PRELOAD = ["torch", "megatron.core", "megatron.core.dist_checkpointing", "torch.distributed.checkpoint", "deepspeed"]


def _context():
    """forkserver on CPU machines; spawn where CUDA is present (a forked worker cannot use a CUDA driver that its
    parent initialised while importing)."""
    import torch

    if torch.cuda.is_available():
        return mp.get_context("spawn")
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


_CONTEXT = _context()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(rank: int, world_size: int, jobs, results) -> None:
    # Gengram takes its PyTorch path, as a CPU training run does: only the kernel's own tests run the interpreter.
    os.environ.pop("TRITON_INTERPRET", None)
    while True:
        job = jobs.get()
        if job is None:
            return
        fn, args, port, out_dir = job
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
        try:
            Path(out_dir, f"rank{rank}.pkl").write_bytes(pickle.dumps(fn(*args)))
        except BaseException:
            results.put((rank, traceback.format_exc()))
            return  # its state (process group, megatron globals) is unknown: this set of workers is finished
        results.put((rank, None))


class _Workers:
    """world_size worker processes, rank r reading jobs from its own queue."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        self.results = _CONTEXT.Queue()
        self.jobs = [_CONTEXT.Queue() for _ in range(world_size)]
        self.processes = [_CONTEXT.Process(target=_serve, args=(r, world_size, self.jobs[r], self.results),
                                           daemon=True) for r in range(world_size)]
        for process in self.processes:
            process.start()

    def run(self, fn, args) -> List:
        with tempfile.TemporaryDirectory() as out_dir:
            port = free_port()
            for rank_jobs in self.jobs:
                rank_jobs.put((fn, args, port, out_dir))
            failures = self._collect(fn)
            if failures:
                raise AssertionError(f"{fn.__name__} failed on {self.world_size} rank(s):\n" + "\n".join(failures))
            return [pickle.loads(Path(out_dir, f"rank{r}.pkl").read_bytes()) for r in range(self.world_size)]

    def _collect(self, fn) -> List[str]:
        """Wait for every rank's report; the tracebacks of those that failed (or that died without a report)."""
        pending, failures, waited = set(range(self.world_size)), [], 0.0
        while pending and not failures:
            try:
                rank, error = self.results.get(timeout=1.0)
            except queue.Empty:
                waited += 1.0
                dead = [r for r in pending if not self.processes[r].is_alive()]
                if dead:
                    failures.append(f"rank(s) {dead} exited ({[self.processes[r].exitcode for r in dead]})")
                elif waited > JOB_TIMEOUT_S:
                    failures.append(f"no result after {JOB_TIMEOUT_S} s")
                continue
            pending.discard(rank)
            if error:
                failures.append(f"--- rank {rank}\n{error}")
        return failures

    def close(self) -> None:
        for process, rank_jobs in zip(self.processes, self.jobs):
            if process.is_alive():
                rank_jobs.put(None)
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()


_WORKERS: Dict[int, _Workers] = {}


def run_distributed(world_size: int, fn, *args, fresh: bool = False) -> List:
    """fn(*args) on every rank; returns the per-rank results in rank order (fn must be importable by name)."""
    if fresh:
        workers = _Workers(world_size)
        try:
            return workers.run(fn, args)
        finally:
            workers.close()
    workers = _WORKERS.get(world_size)
    if workers is None:
        workers = _WORKERS[world_size] = _Workers(world_size)
    try:
        return workers.run(fn, args)
    except BaseException:
        _WORKERS.pop(world_size, None)
        workers.close()
        raise


@atexit.register
def _close_all() -> None:
    for workers in _WORKERS.values():
        workers.close()
    _WORKERS.clear()
