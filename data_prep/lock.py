"""One `data prep` per --out at a time, and what killed runs leave behind.

The lock is an exclusive fcntl.flock on `.NAME.lock` beside `--out`, holding the owner's PID and host. The kernel
drops a flock when its process dies, however it dies, so a lock file left by a killed run is stale by construction:
the next run takes it over (and says so). A second run while the first is alive stops at once, naming the holder.
On file systems without flock support (some Lustre mounts) the run goes on unlocked, with a warning.

Under the lock, hidden `.NAME.building-PID` folders of runs whose process is gone are removed.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import socket
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from .errors import DataPrepError


def lock_path(out: str) -> str:
    parent, name = os.path.split(os.path.abspath(out))
    return os.path.join(parent, f".{name}.lock")


@contextmanager
def pack_lock(out: str, log: Callable[[str], None]) -> Iterator[None]:
    """Hold the exclusive lock on `out` for the duration of the block (see module docstring)."""
    path = lock_path(out)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _describe(os.pread(fd, 4096, 0))
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DataPrepError(f"{out} is being written by another `nucleotron data prep` ({holder}; lock file "
                                    f"{path}); wait for it to finish or choose another --out") from None
            log(f"warning: cannot lock {path} ({err.strerror}); concurrent runs on {out} are not detected")
            yield
            return
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino   # not unlinked by a finishing holder meanwhile
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        previous = os.pread(fd, 4096, 0)
        if previous.strip():
            log(f"taking over the stale lock {path} left by {_describe(previous)} (no longer running)")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode() + b"\n", 0)
        yield
    finally:
        try:
            os.unlink(path)
        finally:
            os.close(fd)


def _describe(content: bytes) -> str:
    try:
        owner = json.loads(content)
        return f"pid {owner['pid']} on host {owner['host']} since {owner['since']}"
    except (ValueError, KeyError, TypeError):
        return "owner unknown"


def remove_dead_building_dirs(out: str, log: Callable[[str], None]) -> None:
    """Delete `.NAME.building-PID[.old]` folders beside `out` whose PID is not a live process here; report the rest
    (and an `.old` one, the previous pack, when a killed publish left no `out`). Called under the lock, so no other
    prep of `out` is writing them."""
    parent, name = os.path.split(os.path.abspath(out))
    pattern = re.compile(rf"\.{re.escape(name)}\.building-(\d+)(\.old)?")
    for entry in sorted(os.listdir(parent)):
        match = pattern.fullmatch(entry)
        if not match or int(match.group(1)) == os.getpid():
            continue
        path = os.path.join(parent, entry)
        if match.group(2) and not os.path.exists(out):
            log(f"left {path} in place: it holds the previous pack of a run killed while publishing (no {out} now); "
                f"rename it to {out} to get that pack back")
        elif _alive(int(match.group(1))):
            log(f"left {path} in place: process {match.group(1)} is running on this host; delete the folder if it "
                f"is not a `data prep` of {out}")
        else:
            shutil.rmtree(path, ignore_errors=True)
            log(f"removed {path}, left by a killed run (process {match.group(1)})")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True
