"""The environment every training rank gets in a Slurm job: NCCL and threading settings, in one place.

Defaults are written as `${NAME:-default}` so a value the user exported before `sbatch` (sbatch passes the
submitting shell's environment) wins; `--env NAME=VALUE` sets a value outright.
"""
from __future__ import annotations

from typing import List, Tuple

from .quoting import sh
from .slurm_options import SlurmOptions

COMMON = (
    ("PYTHONUNBUFFERED", "1", "log lines reach the Slurm output file as they happen"),
)
GPU = (
    ("CUDA_DEVICE_MAX_CONNECTIONS", "1", "megatron-core overlaps TP/SP communication only with one HW queue"),
    ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1", "a failed collective aborts the job instead of hanging it"),
    ("NCCL_DEBUG", "WARN", "NCCL problems show up in the job log"),
)


def default_settings(options: SlurmOptions) -> Tuple[Tuple[str, str, str], ...]:
    threads = ("OMP_NUM_THREADS", str(options.cpus_per_task or 1), "--cpus-per-task threads per process, not one "
               "per core of the machine")
    return COMMON + (threads,) + (GPU if options.gpus_per_node > 0 else ())  # CPU: Gengram's PyTorch path


def render_environment(options: SlurmOptions) -> str:
    """Bash `export` lines: the defaults (each with why), then the user's --env values."""
    lines: List[str] = []
    for name, value, why in default_settings(options):
        lines.append(f'export {name}="${{{name}:-{value}}}"  # {why}')
    for item in options.env:
        name, _, value = item.partition("=")
        lines.append(f"export {name}={sh(value)}")
    return "\n".join(lines)
