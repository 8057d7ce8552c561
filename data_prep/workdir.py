"""Resumable work files and the atomic publish of a finished pack directory.

Per source file, the work dir keeps the scan (record index + checksums) and one shard per record (.bin tokens,
.frag.npy fragment table, .done marker written last). A re-run after a crash reuses every shard whose marker exists.
The pack is built in a hidden sibling directory and renamed into place; an existing pack is swapped atomically with
renameat2(RENAME_EXCHANGE) where the kernel has it, so readers see either the old pack or the new one.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import shutil

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def write_json_atomic(path: str, content) -> None:
    tmp = path + ".part"
    with open(tmp, "w") as handle:
        json.dump(content, handle)
    os.replace(tmp, path)


def read_json(path: str):
    with open(path) as handle:
        return json.load(handle)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:60]


def building_dir(out: str) -> str:
    parent, name = os.path.split(os.path.abspath(out))
    return os.path.join(parent, f".{name}.building-{os.getpid()}")


def publish(built: str, out: str) -> None:
    """Move `built` to `out`; if `out` exists, exchange them atomically and delete the old pack."""
    out = os.path.abspath(out)
    if not os.path.exists(out):
        os.rename(built, out)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None and renameat2(_AT_FDCWD, built.encode(), _AT_FDCWD, out.encode(),
                                           _RENAME_EXCHANGE) == 0:
        shutil.rmtree(built)          # now holds the old pack
        return
    old = built + ".old"              # no renameat2 (non-Linux, old kernel): two renames, a moment without `out`
    os.rename(out, old)
    os.rename(built, out)
    shutil.rmtree(old)
