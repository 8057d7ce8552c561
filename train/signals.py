"""Preemption: SIGTERM / SIGUSR1 (what Slurm sends before a kill or at `--signal` time) -> save, then exit 75.

The handler only records the signal; the loop asks `stop_requested()` at each step boundary, which all-reduces the
flag so every rank saves at the same step even when the signal reached only some of them.
"""
from __future__ import annotations

import signal

import torch
import torch.distributed as dist

from .log import logger

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionWatch:
    def __init__(self):
        self.received = None
        self._previous = {}

    def install(self) -> "PreemptionWatch":
        for sig in PREEMPTION_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._record)
        return self

    def _record(self, signum, frame):
        if self.received is None:
            logger.info(f"received {signal.Signals(signum).name}: saving a checkpoint at the next step boundary, "
                        f"then exiting for requeue")
        self.received = signum

    def stop_requested(self) -> bool:
        flag = torch.tensor([1 if self.received is not None else 0], dtype=torch.int32)
        if dist.is_initialized() and dist.get_world_size() > 1:
            if dist.get_backend() == "nccl":
                flag = flag.cuda()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
