"""Write one record's documents (fragment tokens, reverse-complemented where drawn, then EOD) at a file offset.

Forward fragments go to the kernel straight from the record's token buffer (no copy in user space). Reverse
fragments are computed batch by batch into one reused buffer: each maximal run of adjacent reverse fragments is
reverse-complemented by one set of numpy passes and every fragment of the run is a slice of it. One pwritev per
batch of IOV_MAX / 2 documents, so a 25 Mb contig at seq_len 8192 takes ~6 system calls.
"""
from __future__ import annotations

import os

import numpy as np

from . import tokens as tk
from .fragments import NRuns

_DOCS_PER_CALL = max(1, min(1024, os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024) // 2)


def write_documents(fd: int, offset: int, tokens, runs: NRuns, starts: np.ndarray, lengths: np.ndarray,
                    reverse: np.ndarray) -> int:
    """pwritev every fragment's document at `offset`; `runs` are the record's N runs. Returns the bytes written."""
    arr = np.frombuffer(tokens, dtype=np.uint8)
    view = memoryview(tokens)
    ends = starts + lengths
    rc_buffer = np.empty(0, dtype=np.uint8)
    written = 0
    for lo in range(0, len(starts), _DOCS_PER_CALL):
        hi = min(lo + _DOCS_PER_CALL, len(starts))
        rc_from, rc_to, rc_buffer = _reverse_runs(arr, runs, starts[lo:hi], ends[lo:hi], reverse[lo:hi], rc_buffer)
        rc_view = memoryview(rc_buffer)
        pieces = [tk.EOD_BYTE] * (2 * (hi - lo))
        pieces[0::2] = [rc_view[a:b] if rev else view[s:e] for s, e, a, b, rev in
                        zip(starts[lo:hi].tolist(), ends[lo:hi].tolist(), rc_from.tolist(), rc_to.tolist(),
                            reverse[lo:hi].tolist())]
        size = int(lengths[lo:hi].sum()) + (hi - lo)
        _pwritev_all(fd, pieces, offset + written, size)
        written += size
    return written


def _reverse_runs(arr: np.ndarray, runs: NRuns, starts: np.ndarray, ends: np.ndarray, reverse: np.ndarray,
                  buffer: np.ndarray):
    """Reverse-complement each run of adjacent reverse fragments into `buffer` (grown if needed); return where each
    fragment's reverse complement lies in it (from, to), and the buffer."""
    joins_previous = np.zeros(len(starts), dtype=bool)
    joins_previous[1:] = reverse[1:] & reverse[:-1] & (starts[1:] == ends[:-1])
    opens = reverse & ~joins_previous
    first, last = np.flatnonzero(opens), np.flatnonzero(reverse & ~np.append(joins_previous[1:], False))
    if not len(first):
        return np.zeros(len(starts), dtype=np.int64), np.zeros(len(starts), dtype=np.int64), buffer
    run_starts, run_ends = starts[first], ends[last]
    at = np.concatenate([[0], np.cumsum(-(-(run_ends - run_starts) // 8) * 8)])      # runs 8-byte aligned
    if at[-1] > len(buffer):
        buffer = np.empty(int(at[-1]), dtype=np.uint8)
    n_starts, n_ends = runs
    n_first = np.searchsorted(n_ends, run_starts, side="right")     # N runs overlapping each reverse run
    n_last = np.searchsorted(n_starts, run_ends, side="left")
    for r, (start, end, offset) in enumerate(zip(run_starts.tolist(), run_ends.tolist(), at.tolist())):
        spans = [(max(int(n_starts[j]), start), min(int(n_ends[j]), end)) for j in range(n_first[r], n_last[r])]
        tk.reverse_complement_into(arr, start, end, buffer[offset:], spans)
    run_of = np.cumsum(opens) - 1                                   # each fragment's run (meaningful if reverse)
    rc_to = at[run_of] + (run_ends[run_of] - starts)
    return rc_to - (ends - starts), rc_to, buffer


def _pwritev_all(fd: int, pieces: list, offset: int, size: int) -> None:
    done = os.pwritev(fd, pieces, offset)
    if done < size:                           # short write (rare on regular files): write the rest plainly
        rest = memoryview(b"".join(pieces))[done:]
        while rest:
            step = os.pwrite(fd, rest, offset + done)
            done, rest = done + step, rest[step:]
