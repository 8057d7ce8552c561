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
Everything after finding the N runs is vectorised over fragments: no Python work per fragment.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from . import tokens as tk
from .genes import Intervals, near_gene


@dataclass(frozen=True)
class FragmentRules:
    seq_len: int
    min_len: int
    n_run: int
    max_n_fraction: float
    rc_probability: float      # 0.0 = forward only
    seed: int


NRuns = Tuple[np.ndarray, np.ndarray]    # starts, ends


def n_runs(tokens) -> NRuns:
    """[start, end) of every maximal run of N tokens, in order.

    Outside assembly gaps N is rare, so we hop from one N to the next with memchr and measure each run; a contig
    with N runs everywhere (dense IUPAC codes) switches to one vectorised pass instead of hopping per run.
    """
    arr = np.frombuffer(tokens, dtype=np.uint8)
    budget = len(arr) // 4096 + 64
    starts, ends = [], []
    find, size = tokens.find, len(arr)
    pos = find(tk.N_BYTE)
    while pos != -1:
        if len(starts) == budget:
            rest_starts, rest_ends = _n_runs_vectorised(arr, pos)
            return (np.concatenate([np.array(starts, np.int64), rest_starts]),
                    np.concatenate([np.array(ends, np.int64), rest_ends]))
        end = pos + 1 if pos + 1 == size or tokens[pos + 1] != tk.N else _run_end(arr, pos + 1)
        starts.append(pos)
        ends.append(end)
        pos = find(tk.N_BYTE, end)
    return np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64)


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


def _n_runs_vectorised(arr: np.ndarray, pos: int) -> NRuns:
    edges = np.flatnonzero(np.diff((arr[pos:] == tk.N).view(np.int8), prepend=0, append=0)) + pos
    return edges[0::2].astype(np.int64), edges[1::2].astype(np.int64)


def strand_generator(seed: int, assembly: str, contig: str) -> np.random.Generator:
    digest = hashlib.blake2b(f"{assembly}\x00{contig}".encode(), digest_size=8).digest()
    return np.random.default_rng([seed, int.from_bytes(digest, "little")])


def cut_arrays(size: int, runs: NRuns, rules: FragmentRules, assembly: str, contig: str,
               genes: Optional[Intervals] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kept fragments of a contig of `size` tokens with N at `runs` (from n_runs), as arrays (start int64,
    length int64, reverse bool) in contig order; see the rules above."""
    run_starts, run_ends = runs
    gaps = run_ends - run_starts >= rules.n_run
    seg_starts = np.concatenate([[0], run_ends[gaps]]).astype(np.int64)
    seg_ends = np.concatenate([run_starts[gaps], [size]]).astype(np.int64)
    nonempty = seg_ends > seg_starts
    seg_starts, seg_ends = seg_starts[nonempty], seg_ends[nonempty]

    per_segment = -(-(seg_ends - seg_starts) // rules.seq_len)
    count = int(per_segment.sum())
    first = np.repeat(np.cumsum(per_segment) - per_segment, per_segment)
    starts = np.repeat(seg_starts, per_segment) + (np.arange(count, dtype=np.int64) - first) * rules.seq_len
    lengths = np.minimum(starts + rules.seq_len, np.repeat(seg_ends, per_segment)) - starts
    draws = strand_generator(rules.seed, assembly, contig).random(count)

    keep = lengths >= rules.min_len
    if len(run_starts):
        n_count = _n_before(starts + lengths, run_starts, run_ends) - _n_before(starts, run_starts, run_ends)
        keep &= ~(n_count > rules.max_n_fraction * lengths)
    if genes is not None:
        keep &= near_gene(genes, starts, starts + lengths)
    return starts[keep], lengths[keep], draws[keep] < rules.rc_probability


def _n_before(positions: np.ndarray, run_starts: np.ndarray, run_ends: np.ndarray) -> np.ndarray:
    """How many N tokens lie before each position, from the sorted runs."""
    total = np.concatenate([[0], np.cumsum(run_ends - run_starts)])
    runs = np.searchsorted(run_starts, positions, side="left")        # runs starting before each position
    overhang = np.maximum(run_ends[np.maximum(runs - 1, 0)] - positions, 0)
    return total[runs] - np.where(runs > 0, overhang, 0)
