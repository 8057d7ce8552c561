"""`nucleotron launch slurm --config FILE [overrides] --nodes N --gpus-per-node G [...] [--dry-run]`.

Renders a preemption-safe sbatch script for one run and submits it (printing the job id), or prints it.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from nucleotron.configs import ConfigError

from . import slurm_options
from .layout import check_layout
from .quoting import LaunchError
from .run_spec import RunSpec, check_packs, prepare_run, slurm_folder
from .slurm_options import SlurmOptions
from .slurm_script import job_name, render_job
from .submit import submit

DESCRIPTION = """Submit a training run to Slurm. The job runs one process per GPU (or per CPU task with
--gpus-per-node 0) via srun, saves a checkpoint and requeues itself when Slurm signals the time limit or a
preemption, and resumes from RUN_DIR/checkpoints/latest. Prints the job id; with --dry-run prints the script."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nucleotron launch slurm", description=DESCRIPTION)
    p.add_argument("--config", required=True, help="run config YAML, e.g. configs/experiments/tiny-cpu.yaml")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. data.packs=/data/packs/8k")
    slurm_options.add_arguments(p)
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script; submit nothing")
    p.add_argument("--force", action="store_true", help="submit even if this run dir has a job queued or running")
    return p


def launch_run(spec: RunSpec, options: SlurmOptions, dry_run: bool, force: bool = False) -> Optional[str]:
    """Check, render and submit (or print) one run; returns the job id, or None on a dry run."""
    check_layout(spec.cfg, options.world_size(), options.describe_world())
    script = render_job(spec, options)
    if dry_run:
        print(script)
        return None
    check_packs(spec)
    job_id = submit(script, spec, force=force)
    log = slurm_folder(spec.run_dir) / f"slurm-{job_id}.out"
    print(f"submitted {job_name(spec, options)!r} as job {job_id}; log: {log}", file=sys.stderr)
    return job_id


def main(argv: List[str]) -> int:
    args = parser().parse_intermixed_args(argv)
    try:
        options = slurm_options.merged(SlurmOptions(), args)
        spec = prepare_run(args.config, args.overrides)
        job_id = launch_run(spec, options, args.dry_run, args.force)
    except (ConfigError, LaunchError) as err:
        print(f"nucleotron launch slurm: {err}", file=sys.stderr)
        return 2
    if job_id is not None:
        print(job_id)
    return 0
