"""How many cores this process may use: its CPU affinity mask, which Slurm's --cpus-per-task, taskset and container
cpusets narrow, not the machine's count (os.cpu_count), which over-subscribes a job given part of a node."""
from __future__ import annotations

import os


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
