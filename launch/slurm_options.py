"""The Slurm settings of a job: one dataclass shared by `launch slurm`, the sweep file's `launch:` section and argparse.

A sweep file's `launch:` mapping is merged onto `SlurmOptions` with OmegaConf (unknown keys and wrong types fail
there, naming the key); the command line then overrides whatever it sets explicitly (argparse defaults are None).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import List, Optional

from .quoting import LaunchError

LAUNCHERS = ("srun", "torchrun")


@dataclass
class SlurmOptions:
    nodes: int = 1
    gpus_per_node: int = 8  # 0: a CPU job (gloo), one process per task
    ntasks_per_node: Optional[int] = None  # processes per node; null: gpus_per_node, or 1 on CPU
    cpus_per_task: Optional[int] = None
    job_name: Optional[str] = None  # null: run.name
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    time: Optional[str] = None  # sbatch --time, e.g. 24:00:00 or 2-00:00:00
    exclusive: bool = False
    signal_lead: int = 300  # seconds before the time limit at which training is told to save and requeue
    launcher: str = "srun"  # srun: one task per process (preemption-safe) | torchrun: one torchrun per node
    container_image: Optional[str] = None  # pyxis/enroot image (a registry URI or a .sqsh file)
    container_mounts: Optional[str] = None  # pyxis --container-mounts, e.g. /lustre:/lustre,/scratch:/scratch
    env: List[str] = field(default_factory=list)  # KEY=VALUE exported to every rank
    sbatch_args: List[str] = field(default_factory=list)  # more sbatch options, e.g. --constraint=h200

    def procs_per_node(self) -> int:
        if self.ntasks_per_node is not None:
            return self.ntasks_per_node
        return self.gpus_per_node if self.gpus_per_node > 0 else 1

    def world_size(self) -> int:
        return self.nodes * self.procs_per_node()

    def describe_world(self) -> str:
        """How the process count came about, for error messages."""
        return f"--nodes {self.nodes} x {self.procs_per_node()} per node"


def time_limit_seconds(text: str) -> Optional[int]:
    """sbatch --time in seconds (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS); None for other spellings."""
    days, dash, rest = text.strip().rpartition("-")
    parts = rest.split(":")
    if len(parts) > 3 or not all(part.isdigit() for part in parts) or (dash and not days.isdigit()):
        return None
    numbers = [int(part) for part in parts]
    if not days and len(numbers) < 3:
        numbers = [0] + numbers  # without days the first number is minutes
    hours, minutes, seconds = (numbers + [0, 0])[:3]
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


def check(options: SlurmOptions) -> SlurmOptions:
    """Ranges and combinations argparse cannot see; each message names the option."""
    if options.nodes < 1:
        raise LaunchError(f"--nodes={options.nodes} must be at least 1")
    if options.gpus_per_node < 0:
        raise LaunchError(f"--gpus-per-node={options.gpus_per_node} must be 0 (CPU job) or more")
    if options.ntasks_per_node is not None and options.ntasks_per_node < 1:
        raise LaunchError(f"--ntasks-per-node={options.ntasks_per_node} must be at least 1")
    if options.gpus_per_node and options.ntasks_per_node not in (None, options.gpus_per_node):
        raise LaunchError(f"--ntasks-per-node={options.ntasks_per_node} must equal --gpus-per-node="
                          f"{options.gpus_per_node} (one process per GPU); leave it out on GPU jobs")
    if options.cpus_per_task is not None and options.cpus_per_task < 1:
        raise LaunchError(f"--cpus-per-task={options.cpus_per_task} must be at least 1")
    if not 1 <= options.signal_lead <= 65535:
        raise LaunchError(f"--signal-lead={options.signal_lead} must be 1..65535 seconds (Slurm's limit); "
                          f"give checkpointing enough time, e.g. 300")
    limit = time_limit_seconds(options.time) if options.time is not None else None
    if options.time is not None and limit is None:
        raise LaunchError(f"--time={options.time!r} is not a Slurm time limit; use one of MM, MM:SS, HH:MM:SS, D-HH, "
                          f"D-HH:MM, D-HH:MM:SS (e.g. 24:00:00 or 2-00:00:00)")
    if limit and options.signal_lead >= limit:          # 0 is Slurm's "no limit"
        raise LaunchError(f"--signal-lead={options.signal_lead} s is not shorter than --time={options.time} "
                          f"({limit} s): the job would be told to stop as it starts; lower --signal-lead or raise "
                          f"--time")
    if options.launcher not in LAUNCHERS:
        raise LaunchError(f"--launcher={options.launcher!r} is not one of: {', '.join(LAUNCHERS)}")
    if options.container_mounts and not options.container_image:
        raise LaunchError("--container-mounts needs --container-image")
    for item in options.env:
        key, sep, _ = item.partition("=")
        if not sep or not key.isidentifier():
            raise LaunchError(f"--env {item!r} must look like NAME=VALUE (NAME a shell variable name)")
    for item in options.sbatch_args:
        if not item.startswith("--"):
            raise LaunchError(f"--sbatch-arg {item!r} must be a long sbatch option such as --constraint=h200 "
                              f"(write it as --sbatch-arg=--constraint=h200)")
    return options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The Slurm options; every default is None so only what the user typed overrides a sweep's `launch:`."""
    group = parser.add_argument_group("Slurm job")
    group.add_argument("--nodes", type=int, help="nodes to allocate (default 1)")
    group.add_argument("--gpus-per-node", type=int,
                       help="GPUs per node, one training process each (default 8); 0 = CPU job with gloo")
    group.add_argument("--ntasks-per-node", type=int,
                       help="processes per node; CPU jobs only (default 1), GPU jobs use one per GPU")
    group.add_argument("--cpus-per-task", type=int, help="CPU cores per process (also OMP_NUM_THREADS)")
    group.add_argument("--job-name", help="Slurm job name (default: run.name)")
    group.add_argument("--partition", help="sbatch --partition")
    group.add_argument("--account", help="sbatch --account")
    group.add_argument("--qos", help="sbatch --qos")
    group.add_argument("--time", help="time limit, e.g. 24:00:00; the job requeues itself before it")
    group.add_argument("--exclusive", action="store_true", default=None, help="whole nodes (sbatch --exclusive)")
    group.add_argument("--signal-lead", type=int,
                       help="seconds before the time limit to save a checkpoint and requeue (default 300)")
    group.add_argument("--launcher", choices=LAUNCHERS,
                       help="srun: one Slurm task per process, signalled directly (default, preemption-safe); "
                            "torchrun: one torchrun per node (workers get ~30 s to save)")
    group.add_argument("--container-image", help="run inside this pyxis/enroot image (URI or .sqsh)")
    group.add_argument("--container-mounts", help="pyxis mounts, e.g. /lustre:/lustre")
    group.add_argument("--env", action="append", metavar="NAME=VALUE", help="export to every rank (repeatable)")
    group.add_argument("--sbatch-arg", dest="sbatch_args", action="append", metavar="--OPTION[=VALUE]",
                       help="any other sbatch option, e.g. --sbatch-arg=--constraint=h200 (repeatable)")


def merged(base: SlurmOptions, args: argparse.Namespace) -> SlurmOptions:
    """base with every option the command line gave; list options are appended, not replaced."""
    changes = {}
    for f in dataclasses.fields(SlurmOptions):
        given = getattr(args, f.name, None)
        if given is None:
            continue
        changes[f.name] = [*getattr(base, f.name), *given] if isinstance(given, list) else given
    return check(dataclasses.replace(base, **changes))


def to_cli_args(options: SlurmOptions) -> List[str]:
    """The `nucleotron launch slurm` flags that reproduce these options (defaults left out)."""
    args: List[str] = []
    default = SlurmOptions()
    for f in dataclasses.fields(SlurmOptions):
        value = getattr(options, f.name)
        flag = "--sbatch-arg" if f.name == "sbatch_args" else "--" + f.name.replace("_", "-")
        if isinstance(value, list):
            args += [f"{flag}={item}" for item in value]
        elif isinstance(value, bool):
            args += [flag] if value else []
        elif value is not None and (value != getattr(default, f.name) or f.name in ("nodes", "gpus_per_node")):
            args += [flag, str(value)]
    return args
