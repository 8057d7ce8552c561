"""The one way this project writes a small file that must never be seen half-written: a temporary name beside the
target, flushed and fsynced, renamed over the target, and the directory fsynced so the rename survives a crash.

Every room uses it (run directories, checkpoints' small files, pack manifests, frozen launch configs), so it lives in
the one package every room already imports.
"""
from __future__ import annotations

import json
import os
from typing import Any, Union


def fsync_directory(directory: str) -> None:
    """Make a rename or a new entry in `directory` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str, data: Union[str, bytes]) -> None:
    """Write `data` to `path` atomically and durably; the previous content stays intact if anything fails."""
    tmp = f"{path}.tmp-{os.getpid()}"
    mode = "wb" if isinstance(data, bytes) else "w"
    try:
        with open(tmp, mode) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_directory(os.path.dirname(os.path.abspath(path)))


def write_json_atomic(path: str, content: Any, indent: int = 2) -> None:
    write_atomic(path, json.dumps(content, indent=indent) + "\n")
