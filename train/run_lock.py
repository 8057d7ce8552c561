"""One trainer per run directory: an exclusive lock file, RUN_DIR/train.lock, holding who owns it.

Two trainers writing one RUN_DIR would mix checkpoints and lose metrics. The lock file is created exclusively
(O_EXCL, which works on shared file systems where flock may be node-local) and names its holder: host, PID, the
process's start time and the Slurm job id. A later trainer takes it over only when the holder is provably gone (same
host, and that PID no longer runs the same process) or when it is the same Slurm job requeued; otherwise it stops
with an error naming the holder. The lock is removed on exit.
"""
from __future__ import annotations

import json
import os
import socket
import time
from typing import Optional

import psutil

from nucleotron.configs import ConfigError
from nucleotron.configs.files import write_atomic

LOCK_NAME = "train.lock"


def _me() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "started": psutil.Process(pid).create_time(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                     time.gmtime())}


def _alive(holder: dict) -> bool:
    try:
        process = psutil.Process(int(holder["pid"]))
        return abs(process.create_time() - float(holder.get("started", 0))) < 1.0
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


class RunLock:
    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, LOCK_NAME)
        self.mine: Optional[dict] = None

    def _read(self) -> Optional[dict]:
        try:
            with open(self.path) as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return None

    def _stale_reason(self, holder: Optional[dict], me: dict) -> Optional[str]:
        if holder is None:
            return "an unreadable lock file"
        if holder.get("slurm_job_id") and holder.get("slurm_job_id") == me["slurm_job_id"]:
            return f"Slurm job {me['slurm_job_id']}, requeued"
        if holder.get("host") == me["host"] and not _alive(holder):
            return f"PID {holder.get('pid')} on {holder.get('host')}, which is no longer running"
        return None

    def acquire(self) -> "RunLock":
        me = _me()
        text = json.dumps(me) + "\n"
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
        except FileExistsError:
            holder = self._read()
            reason = self._stale_reason(holder, me)
            if reason is None:
                raise ConfigError(
                    f"{os.path.dirname(self.path)} is in use by another trainer (PID {holder.get('pid')} on host "
                    f"{holder.get('host')}, Slurm job {holder.get('slurm_job_id') or '-'}, since "
                    f"{holder.get('since')}); use another run.dir, or if that process is gone for sure, delete "
                    f"{self.path}") from None
            write_atomic(self.path, text)
            from .log import logger

            logger.warning(f"took over {self.path} from {reason}")
        self.mine = me
        return self

    def release(self) -> None:
        if self.mine is not None and self._read() == self.mine:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        self.mine = None
