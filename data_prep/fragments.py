"""Cut one contig's tokens into documents: split at long N runs, cut fixed-length fragments, filter, pick strands.

Rules (all recorded in the manifest):
- a run of >= n_run N's (assembly gap) splits the contig into segments; the run itself is dropped;
- each segment is cut from its start into fragments of seq_len bases; the tail shorter than seq_len is kept when it
  is >= min_len bases, else dropped;
- a fragment whose N fraction is above max_n_fraction is dropped;
- with a gene filter, a fragment is kept only if it overlaps a gene widened by the window;
- strand: every cut fragment (kept or not, in contig order) draws u ~ U[0,1) from a generator seeded by
  (seed, blake2b(assembly, contig)); reverse complement when u < rc_probability. So strands depend only on the seed,
  assembly, contig and fragment position, never on worker count, scheduling or the filters.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from . import tokens as tk
from .genes import Intervals, near_gene

_IOV_BATCH = max(2, min(1024, os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024) // 2 * 2)


@dataclass(frozen=True)
class FragmentRules:
    seq_len: int
    min_len: int
    n_run: int
    max_n_fraction: float
    rc_probability: float      # 0.0 = forward only
    seed: int


@dataclass(frozen=True)
class Fragment:
    start: int                 # 0-based, in the contig
    length: int
    reverse: bool


def segments(tokens: bytes, n_run: int) -> List[tuple]:
    """[start, end) spans between runs of >= n_run N tokens.

    The leftmost match of n_run N's after the previous run's end starts a maximal run (the byte before it is not N),
    so a substring search (skipping ~n_run bytes per probe) finds every long run without a pass over all tokens;
    only the run itself is scanned to find its end.
    """
    if tokens.find(tk.N_BYTE) == -1:
        return [(0, len(tokens))] if tokens else []
    arr = np.frombuffer(tokens, dtype=np.uint8)
    gap = tk.N_BYTE * n_run
    spans, cursor = [], 0
    start = tokens.find(gap)
    while start != -1:
        end = _run_end(arr, start + n_run)
        if start > cursor:
            spans.append((cursor, start))
        cursor = end
        start = tokens.find(gap, end)
    if cursor < len(tokens):
        spans.append((cursor, len(tokens)))
    return spans


def _run_end(arr: np.ndarray, pos: int) -> int:
    """The first index >= pos whose token is not N (len(arr) if none)."""
    step = 4096
    while pos < len(arr):
        window = arr[pos:pos + step]
        other = int(np.argmax(window != tk.N))
        if window[other] != tk.N:
            return pos + other
        pos += len(window)
        step = min(step * 2, 1 << 20)
    return len(arr)


def strand_generator(seed: int, assembly: str, contig: str) -> np.random.Generator:
    digest = hashlib.blake2b(f"{assembly}\x00{contig}".encode(), digest_size=8).digest()
    return np.random.default_rng([seed, int.from_bytes(digest, "little")])


def cut_arrays(tokens: bytes, rules: FragmentRules, assembly: str, contig: str,
               genes: Optional[Intervals] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kept fragments as arrays (start int64, length int64, reverse bool), in contig order; see the rules above."""
    spans = np.array(segments(tokens, rules.n_run), dtype=np.int64).reshape(-1, 2)
    per_segment = -(-(spans[:, 1] - spans[:, 0]) // rules.seq_len)
    count = int(per_segment.sum())
    first = np.repeat(np.cumsum(per_segment) - per_segment, per_segment)
    starts = np.repeat(spans[:, 0], per_segment) + (np.arange(count, dtype=np.int64) - first) * rules.seq_len
    lengths = np.minimum(starts + rules.seq_len, np.repeat(spans[:, 1], per_segment)) - starts
    draws = strand_generator(rules.seed, assembly, contig).random(count)
    keep = lengths >= rules.min_len
    if tokens.find(tk.N_BYTE) != -1 or genes is not None:
        find, count_n, limit = tokens.find, tokens.count, rules.max_n_fraction
        for i, start, length in zip(np.flatnonzero(keep).tolist(), starts[keep].tolist(), lengths[keep].tolist()):
            end = start + length
            if find(tk.N_BYTE, start, end) != -1 and count_n(tk.N_BYTE, start, end) > limit * length:
                keep[i] = False
            elif genes is not None and not near_gene(genes, start, end):
                keep[i] = False
    return starts[keep], lengths[keep], draws[keep] < rules.rc_probability


def cut(tokens: bytes, rules: FragmentRules, assembly: str, contig: str,
        genes: Optional[Intervals] = None) -> List[Fragment]:
    starts, lengths, reverse = cut_arrays(tokens, rules, assembly, contig, genes)
    return [Fragment(s, n, r) for s, n, r in zip(starts.tolist(), lengths.tolist(), reverse.tolist())]


def document(tokens: bytes, fragment: Fragment) -> bytes:
    """The fragment's tokens (reverse-complemented if its strand says so) followed by EOD."""
    piece = tokens[fragment.start:fragment.start + fragment.length]
    return (tk.reverse_complement(piece) if fragment.reverse else piece) + tk.EOD_BYTE


def write_documents(fd: int, tokens: bytes, starts: np.ndarray, lengths: np.ndarray, reverse: np.ndarray) -> int:
    """Write every fragment's document (as `document` gives it) to the file descriptor; return the bytes written.

    Forward fragments go to the kernel straight from the contig's buffer (os.writev of memoryview slices, no copy in
    user space); only reverse-strand fragments are materialised, one batch of at most IOV_MAX / 2 at a time.
    """
    view, batch, written = memoryview(tokens), [], 0
    rc = tk.reverse_complement_range
    for start, length, rev in zip(starts.tolist(), lengths.tolist(), reverse.tolist()):
        batch.append(rc(tokens, start, start + length) if rev else view[start:start + length])
        batch.append(tk.EOD_BYTE)
        if len(batch) >= _IOV_BATCH:
            written += _writev_all(fd, batch)
            batch = []
    if batch:
        written += _writev_all(fd, batch)
    return written


def _writev_all(fd: int, buffers: list) -> int:
    total = sum(len(b) for b in buffers)
    done = os.writev(fd, buffers) if hasattr(os, "writev") else 0
    if done < total:                          # short write (rare on regular files): write the rest plainly
        rest = memoryview(b"".join(buffers))[done:]
        while rest:
            rest = rest[os.write(fd, rest):]
    return total
