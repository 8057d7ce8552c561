"""`nucleotron launch <slurm|local|sweep> ...`: each subcommand lives in its own module, imported when it runs.

Nothing here (or in those modules) imports torch or megatron-core: `launch ... --dry-run` starts in well under a
second on a login node, and the training processes import the heavy stack themselves.
"""
from __future__ import annotations

import importlib
import sys
from typing import List

SUBCOMMANDS = {
    "slurm": ("nucleotron.launch.slurm", "submit one run as a preemption-safe sbatch job (--dry-run prints it)"),
    "local": ("nucleotron.launch.local", "torchrun on this machine: --nproc K (GPUs, or CPU ranks with gloo)"),
    "sweep": ("nucleotron.launch.sweep", "expand a sweep file into runs and submit each (--dry-run lists them)"),
}


def usage() -> str:
    lines = ["usage: nucleotron launch <slurm|local|sweep> [args...]", "", "subcommands:"]
    lines += [f"  {name:<6}  {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run 'nucleotron launch <subcommand> --help' for its options."]
    return "\n".join(lines)


def main(argv: List[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] not in SUBCOMMANDS:
        print(f"nucleotron launch: unknown subcommand {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)
