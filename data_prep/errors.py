"""One exception type for bad input, so the CLI can print it and exit non-zero without a traceback."""
from __future__ import annotations

import errno
import os
import shutil


class DataPrepError(Exception):
    """Bad input or state the user must fix; the message names the file/record/column and what to do next."""


def os_error(path: str, err: OSError) -> DataPrepError:
    """A system error (disk full, permission, I/O) while reading or writing `path`, as one line that says what to
    do. A failed run publishes nothing, and the records it finished stay in the work dir for the re-run."""
    target = err.filename if isinstance(err.filename, str) else path
    after = ("and re-run the same command (records already cut are kept in the work dir; a pack already at --out "
             "is unchanged)")
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return DataPrepError(f"{target}: no space left on the device ({_free_space(target)} free there); free some "
                             f"space or pass --work-dir on a larger disk, {after}")
    return DataPrepError(f"{target}: {err.strerror or err}; fix that {after}")


def _free_space(path: str) -> str:
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        free = shutil.disk_usage(path or ".").free
    except OSError:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            return f"{free:.0f} {unit}" if unit == "B" else f"{free:.1f} {unit}"
        free /= 1024
    return "unknown"
