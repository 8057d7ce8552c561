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
from typing import Sequence

from nucleotron.configs import files

from .errors import DataPrepError
from .manifest import is_pack

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def write_json_atomic(path: str, content) -> None:
    """Work files (scan cache, record markers): compact JSON through the project's fsyncing atomic writer."""
    files.write_json_atomic(path, content, indent=None)


def read_json(path: str):
    with open(path) as handle:
        return json.load(handle)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:60]


def building_dir(out: str) -> str:
    parent, name = os.path.split(os.path.abspath(out))
    return os.path.join(parent, f".{name}.building-{os.getpid()}")


def check_out(out: str, overwrite: bool, inputs: Sequence[str]) -> None:
    """Refuse an --out that the run must not replace: a file, a link, anything but a pack (or an empty folder) even
    with --overwrite, and a folder holding one of the run's inputs."""
    if not os.path.lexists(out):
        return
    if os.path.islink(out) or not os.path.isdir(out):
        raise DataPrepError(f"--out {out} is {'a symbolic link' if os.path.islink(out) else 'a file'}, not a pack "
                            f"directory; choose a new path for the pack (nothing was changed)")
    pack = is_pack(out)
    if not overwrite:
        raise DataPrepError(f"{out} already exists; " + ("pass --overwrite to replace it (the swap is atomic) or "
                                                         "choose another --out" if pack else
                                                         "choose another --out"))
    inside = [p for p in inputs if os.path.realpath(p).startswith(os.path.realpath(out) + os.sep)]
    if inside:
        raise DataPrepError(f"--overwrite would delete {out}, which holds {inside[0]}, an input of this run; "
                            f"choose another --out (nothing was changed)")
    if not pack and os.listdir(out):
        raise DataPrepError(f"--overwrite refuses to replace {out}: it is not a pack made by `nucleotron data prep` "
                            f"(no manifest.json saying so); choose another --out or move its contents away")


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
