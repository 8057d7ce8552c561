"""The process pool of one `data prep` run, and how it stops when a task fails.

Pool.terminate() kills workers with SIGTERM; a worker killed while putting its result on the result queue keeps that
queue's lock forever and terminate() then hangs. So when a task fails we do not terminate: we create a stop flag (a
file) that every task checks before it starts, and that records waiting for their offset check while they wait; the
queued tasks then end at once and the pool is closed and joined normally. Only an interrupt (Ctrl-C, which reaches
the workers too) falls back to terminate().
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from multiprocessing import get_context
from typing import Optional

_stop_path: Optional[str] = None       # set in each worker by the pool's initializer


class Stopped(Exception):
    """Raised in a worker because another task of the run failed."""


def raise_if_stopping() -> None:
    if _stop_path is not None and os.path.exists(_stop_path):
        raise Stopped("stopped: another task of this run failed")


def _remember(stop_path: str) -> None:
    global _stop_path
    _stop_path = stop_path


@contextmanager
def worker_pool(workers: int, stop_path: str):
    """Yields map(fn, items, ordered) over `workers` processes, or in this process for workers=1."""
    if workers == 1:
        yield lambda fn, items, ordered: map(fn, items)
        return
    if os.path.exists(stop_path):          # left by a failed earlier run
        os.remove(stop_path)
    pool = get_context("fork").Pool(workers, initializer=_remember, initargs=(stop_path,))
    try:
        yield lambda fn, items, ordered: pool.imap(fn, items) if ordered else pool.imap_unordered(fn, items)
    except Exception:
        open(stop_path, "w").close()
        pool.close()
        pool.join()
        raise
    except BaseException:
        pool.terminate()
        raise
    else:
        pool.close()
        pool.join()
    finally:
        if os.path.exists(stop_path):
            os.remove(stop_path)
