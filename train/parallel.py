"""Process groups and megatron-core's parallel state: NCCL on GPUs, gloo (with CPU-mode patches) without them."""
from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Tuple

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

from nucleotron.configs import NucleotronConfig, ParallelConfig
from nucleotron.configs.cores import usable_cores

from .cpu_mode import apply_cpu_patches


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ranks_from_srun() -> None:
    """One srun task per process (no torchrun): take rank and world size from Slurm's step variables.

    SLURM_STEP_NUM_TASKS exists only inside an srun step, so a batch script running the command directly stays a
    single process. MASTER_ADDR/MASTER_PORT come from the launcher's script (the first node of the allocation).
    """
    if "RANK" in os.environ or "SLURM_STEP_NUM_TASKS" not in os.environ:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_STEP_NUM_TASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")


def rendezvous_environment() -> None:
    """The variables torch.distributed's env:// reads: torchrun's as they are, srun's mapped (one task per rank), or
    one process on a free local port."""
    _ranks_from_srun()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "WORLD_SIZE" not in os.environ and "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(_free_port())  # one process: never collide with another run
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        os.environ.setdefault(key, value)


def share_cores_between_local_ranks() -> None:
    """CPU mode without OMP_NUM_THREADS: this machine's ranks split the cores they may use (the affinity mask: a
    Slurm job's share of the node) instead of each taking all of them."""
    if "OMP_NUM_THREADS" not in os.environ:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("SLURM_NTASKS_PER_NODE", "1")))
        torch.set_num_threads(max(1, usable_cores() // max(1, local)))


def init_distributed(parallel: ParallelConfig, seed: int) -> None:
    """Start torch.distributed from torchrun's or srun's env (or as one process) and set up TP/PP/EP/CP groups."""
    cpu = apply_cpu_patches()
    if not dist.is_initialized():
        rendezvous_environment()
        if not cpu:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        else:
            share_cores_between_local_ranks()
        dist.init_process_group(backend="gloo" if cpu else "nccl", timeout=timedelta(minutes=10))
    world = dist.get_world_size()
    model_parallel = parallel.tensor * parallel.pipeline * parallel.context
    if world % model_parallel:
        raise ValueError(
            f"world size {world} is not divisible by parallel.tensor*parallel.pipeline*parallel.context="
            f"{model_parallel}; launch a multiple of {model_parallel} processes")
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor,
        pipeline_model_parallel_size=parallel.pipeline,
        context_parallel_size=parallel.context,
        expert_model_parallel_size=parallel.expert,
    )
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def device() -> torch.device:
    """Where this rank computes: its CUDA device, or the CPU in CPU mode."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def destroy_distributed() -> None:
    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


class MegatronProcessLayout:
    """The engine-protocol methods of engines whose processes megatron's parallel state lays out (the megatron and
    FOCUS engines): set it up from cfg.parallel, and read this process's data-parallel rank and size from it."""

    cfg: NucleotronConfig

    def init_distributed(self) -> None:
        init_distributed(self.cfg.parallel, self.cfg.run.seed)

    @property
    def data_parallel(self) -> Tuple[int, int]:
        return parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
