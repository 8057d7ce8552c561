"""`nucleotron launch sweep SWEEP.yaml [overrides] [slurm options] [--only GLOB] [--dry-run]`.

Expands the sweep file into runs, loads and checks every run's config first (so one bad entry stops the sweep
before anything is queued), then submits each run as its own preemption-safe Slurm job. A run whose RUN_DIR
already has a job queued or running is skipped, so re-running a partly submitted sweep submits only the rest.
"""
from __future__ import annotations

import argparse
import fnmatch
import shlex
import sys
from pathlib import Path
from typing import List

from nucleotron.configs import ConfigError, resolve_config_path

from . import slurm_options
from .layout import check_layout
from .quoting import LaunchError
from .run_spec import RunSpec, check_packs, prepare_run
from .slurm import launch_run
from .submit import live_jobs
from .sweep_spec import expand


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nucleotron launch sweep",
                                description="Expand a sweep file (e.g. configs/sweeps/ablations-50b/all.yaml) into "
                                            "runs and submit each to Slurm; --dry-run lists them.")
    p.add_argument("sweep", help="sweep YAML")
    p.add_argument("overrides", nargs="*", help="dotted config overrides for every run, e.g. data.packs=/data/8k")
    p.add_argument("--only", action="append", metavar="GLOB", help="only runs whose name matches (repeatable)")
    slurm_options.add_arguments(p)
    p.add_argument("--dry-run", action="store_true", help="list the runs and their commands; submit nothing")
    return p


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def command_line(spec: RunSpec, options: slurm_options.SlurmOptions) -> str:
    """The `nucleotron launch slurm` command that submits this one run by itself."""
    words = ["nucleotron", "launch", "slurm", "--config", _display(spec.config_path), *spec.overrides,
             f"run.dir={_display(spec.run_dir)}", *slurm_options.to_cli_args(options)]
    return shlex.join(words)


def main(argv: List[str]) -> int:
    args = parser().parse_intermixed_args(argv)
    try:
        runs = expand(resolve_config_path(args.sweep))  # as given, or inside the installed configs/
        if args.only:
            runs = [run for run in runs if any(fnmatch.fnmatchcase(run.name, glob) for glob in args.only)]
            if not runs:
                raise LaunchError(f"no run in {args.sweep} matches --only {' '.join(args.only)}")
        planned = []
        for run in runs:  # everything is checked before anything is submitted
            options = slurm_options.merged(run.options, args)
            spec = prepare_run(str(run.config), [*run.overrides, *args.overrides])
            check_layout(spec.cfg, options.world_size(), options.describe_world())
            if not args.dry_run:
                check_packs(spec)
            planned.append((run, spec, options))
        print(f"{len(planned)} run(s) from {args.sweep}", file=sys.stderr)
        if args.dry_run:
            for run, spec, options in planned:
                print(f"{run.name}\t{_display(spec.run_dir)}\n  {command_line(spec, options)}")
            return 0
        for run, spec, options in planned:
            live = live_jobs(spec.run_dir)
            if live:
                print(f"{run.name}\tskipped: job {', '.join(live)} is still queued or running", file=sys.stderr)
                continue
            job_id = launch_run(spec, options, dry_run=False)
            print(f"{run.name}\t{job_id}")
    except (ConfigError, LaunchError) as err:
        print(f"nucleotron launch sweep: {err}", file=sys.stderr)
        return 2
    return 0
