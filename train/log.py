"""One logger for the whole of `train/`: rank 0 speaks; other ranks only warn or fail, naming their rank.

`init_logging()` runs before torch.distributed exists (the rank then comes from torchrun's RANK or srun's
SLURM_PROCID), so even the first messages of a multi-process job are printed once.
"""
from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger("nucleotron")


def _env_rank() -> int:
    for name in ("RANK", "SLURM_PROCID"):
        if name in os.environ:
            try:
                return int(os.environ[name])
            except ValueError:
                pass
    return 0


class _Formatter(logging.Formatter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"{self.prefix} {level}{record.getMessage()}"


def init_logging(rank: int = None) -> logging.Logger:
    """(Re)configure the `nucleotron` logger for this process's rank; returns it."""
    rank = _env_rank() if rank is None else rank
    handler = logging.StreamHandler(sys.stderr)
    prefix = "[nucleotron]" if rank == 0 else f"[nucleotron rank {rank}]"
    handler.setFormatter(_Formatter(prefix))
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False
    return logger
