"""`nucleotron launch local --nproc K --config FILE [overrides]`: torchrun on this machine (CPU gloo or GPUs).

The launcher process becomes torchrun (exec), so Ctrl-C and SIGTERM reach torchrun and its workers directly and
the exit status is training's own (75 after a signal-triggered save: run the same command again to resume).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import List

from nucleotron.configs import ConfigError

from .layout import check_layout
from .quoting import LaunchError
from .run_spec import RunSpec, check_packs, prepare_run


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nucleotron launch local",
                                description="Train with torchrun on this machine: one process per GPU, or K CPU "
                                            "processes with gloo. Re-running the same command resumes.")
    p.add_argument("--nproc", type=int, required=True, help="processes (GPUs to use, or CPU ranks)")
    p.add_argument("--config", required=True, help="run config YAML, e.g. configs/experiments/tiny-cpu.yaml")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. data.packs=packs/8k")
    p.add_argument("--dry-run", action="store_true", help="print the torchrun command; run nothing")
    return p


def torchrun_command(spec: RunSpec, nproc: int) -> List[str]:
    """torchrun through this interpreter (no PATH lookup), training through the `nucleotron` dispatcher module."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "nucleotron.launch.cli", *spec.train_args()]


def main(argv: List[str]) -> int:
    args = parser().parse_intermixed_args(argv)
    try:
        if args.nproc < 1:
            raise LaunchError(f"--nproc={args.nproc} must be at least 1")
        spec = prepare_run(args.config, args.overrides)
        check_layout(spec.cfg, args.nproc, f"--nproc {args.nproc}")
        command = torchrun_command(spec, args.nproc)
        if args.dry_run:
            print(shlex.join(command))
            return 0
        check_packs(spec)
    except (ConfigError, LaunchError) as err:
        print(f"nucleotron launch local: {err}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
    return 0  # not reached
