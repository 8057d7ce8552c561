"""Render the sbatch script for one run: the `#SBATCH` directives, the training command and the launch step."""
from __future__ import annotations

from pathlib import Path
from typing import List

from nucleotron.configs.exit_codes import REQUEUE_EXIT_CODE

from .environment import render_environment
from .quoting import check_printable, directive, sh
from .run_spec import RunSpec, slurm_folder
from .sbatch_template import SRUN_LAUNCH, TEMPLATE, TORCHRUN_LAUNCH, fill
from .slurm_options import SlurmOptions

TRAIN_EXECUTABLE = "nucleotron"


def output_pattern(run_dir: Path) -> str:
    """sbatch --output: one file per job id, appended to across requeues (`%` in the path itself is doubled)."""
    return str(slurm_folder(run_dir)).replace("%", "%%") + "/slurm-%j.out"


def job_name(spec: RunSpec, options: SlurmOptions) -> str:
    return options.job_name or spec.name


def _directives(spec: RunSpec, options: SlurmOptions) -> List[str]:
    torchrun = options.launcher == "torchrun"
    tasks = 1 if torchrun else options.procs_per_node()
    lines = [directive("--job-name", job_name(spec, options)),
             directive("--nodes", options.nodes),
             directive("--ntasks-per-node", tasks)]
    if options.gpus_per_node:
        lines.append(directive("--gpus-per-node", options.gpus_per_node))
    if options.cpus_per_task:
        per_task = options.cpus_per_task * (options.procs_per_node() if torchrun else 1)
        lines.append(directive("--cpus-per-task", per_task))
    for option in ("partition", "account", "qos", "time"):
        value = getattr(options, option)
        if value:
            lines.append(directive(f"--{option}", value))
    if options.exclusive:
        lines.append(directive("--exclusive"))
    signal = f"B:USR1@{options.signal_lead}" if torchrun else f"USR1@{options.signal_lead}"
    lines += [directive("--chdir", spec.workdir),
              directive("--output", output_pattern(spec.run_dir)),
              directive("--open-mode", "append"),
              directive("--requeue"),
              directive("--signal", signal)]
    for item in options.sbatch_args:
        option, sep, value = item.partition("=")
        lines.append(directive(option, value if sep else None))
    return lines


def _srun_flags(spec: RunSpec, options: SlurmOptions) -> str:
    flags = []
    if options.cpus_per_task and options.launcher == "srun":
        flags.append(f"--cpus-per-task={options.cpus_per_task}")  # srun no longer inherits it from sbatch (22.05+)
    if options.container_image:
        flags += [f"--container-image={sh(options.container_image)}", f"--container-workdir={sh(spec.workdir)}"]
        if options.container_mounts:
            flags.append(f"--container-mounts={sh(options.container_mounts)}")
    return "".join(" " + flag for flag in flags)


def render_job(spec: RunSpec, options: SlurmOptions) -> str:
    """The complete sbatch script; every config or command-line value in it is quoted."""
    torchrun = options.launcher == "torchrun"
    launch = fill(TORCHRUN_LAUNCH if torchrun else SRUN_LAUNCH, {"srun_flags": _srun_flags(spec, options)})
    signal_note = (f"USR1 {options.signal_lead} s before the time limit goes to the batch shell, which sends "
                   f"SIGTERM to torchrun" if torchrun else
                   f"Slurm sends USR1 to every rank {options.signal_lead} s before the time limit")
    return fill(TEMPLATE, {
        "signal_note": signal_note,
        "directives": "\n".join(_directives(spec, options)),
        "run_dir": sh(spec.run_dir),
        "origin": check_printable(" ".join(sh(word) for word in [TRAIN_EXECUTABLE, *spec.train_args()]),
                                  "--config and overrides"),
        "train_command": " ".join(sh(word) for word in [TRAIN_EXECUTABLE, *spec.frozen_train_args()]),
        "procs_per_node": str(options.procs_per_node()),
        "requeue_exit_code": str(REQUEUE_EXIT_CODE),
        "environment": render_environment(options),
        "launch": launch,
    })
