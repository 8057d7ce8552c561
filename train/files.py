"""Small files of a run directory written so that a kill never leaves a half-written one under its final name."""
from __future__ import annotations

import os


def write_text_atomic(path: str, text: str) -> None:
    """Write a temporary file, flush it to disk, then rename it over `path`."""
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
