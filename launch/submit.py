"""Hand a rendered script to sbatch, keeping a copy and the job id in RUN_DIR/slurm/.

Two jobs writing one RUN_DIR would overwrite each other's checkpoints, so a run whose recorded job is still queued
or running is not submitted again (unless forced).
"""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import List

from .quoting import LaunchError
from .run_spec import RunSpec, slurm_folder

JOBS_FILE = "jobs.txt"


def _sbatch_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise LaunchError(f"`{name}` is not on PATH: run this on a Slurm login node, or add --dry-run to print the "
                          f"job script instead of submitting it")
    return path


def recorded_jobs(run_dir: Path) -> List[str]:
    path = slurm_folder(run_dir) / JOBS_FILE
    return path.read_text().split() if path.exists() else []


def live_jobs(run_dir: Path) -> List[str]:
    """Recorded job ids of this run that Slurm still has pending, running or requeued."""
    recorded = recorded_jobs(run_dir)
    if not recorded:
        return []
    out = subprocess.run([_sbatch_tool("squeue"), "-h", "-o", "%i"], capture_output=True, text=True, timeout=60)
    if out.returncode:
        raise LaunchError(f"squeue failed ({out.returncode}): {out.stderr.strip()}")
    queued = set(out.stdout.split())
    return [job for job in recorded if job in queued]


def submit(script: str, spec: RunSpec, force: bool = False) -> str:
    """Freeze the config and write the script into RUN_DIR/slurm/, sbatch it, record and return the job id."""
    sbatch = _sbatch_tool("sbatch")
    run_dir = spec.run_dir
    if not force:
        live = live_jobs(run_dir)
        if live:
            raise LaunchError(f"job {', '.join(live)} for {run_dir} is still queued or running; two jobs on one "
                              f"run dir would overwrite each other's checkpoints. Wait for it, `scancel` it, or "
                              f"pass --force")
    folder = slurm_folder(run_dir)
    folder.mkdir(parents=True, exist_ok=True)  # sbatch does not create the --output folder
    spec.freeze()
    path = folder / f"submitting-{time.time_ns()}.sbatch"
    path.write_text(script)
    out = subprocess.run([sbatch, "--parsable", str(path)], capture_output=True, text=True, timeout=120)
    if out.returncode:
        raise LaunchError(f"sbatch {path} failed ({out.returncode}): {out.stderr.strip()}")
    job_id = out.stdout.strip().split(";")[0]
    path.rename(folder / f"job-{job_id}.sbatch")  # the script as submitted, named after its job
    with open(folder / JOBS_FILE, "a") as handle:
        handle.write(job_id + "\n")
    return job_id
