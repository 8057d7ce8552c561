"""Thread and worker counts follow the cores a process may use (its affinity mask: a Slurm job's share of a node),
not the machine's core count."""
import os

import torch

from nucleotron.configs.cores import usable_cores


def test_usable_cores_is_the_affinity_mask_and_falls_back_to_the_count(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 5, 7}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert usable_cores() == 3
    monkeypatch.delattr(os, "sched_getaffinity")  # macOS has none
    assert usable_cores() == 64


def test_cpu_ranks_split_the_cores_they_may_use(monkeypatch):
    from nucleotron.train.parallel import share_cores_between_local_ranks

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    share_cores_between_local_ranks()
    assert threads == [2]  # 4 usable cores / 2 ranks, not 64 / 2
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's setting wins
    share_cores_between_local_ranks()
    assert threads == [2]
