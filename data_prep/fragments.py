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
from dataclasses import dataclass
from typing import List, Optional

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


@dataclass(frozen=True)
class Fragment:
    start: int                 # 0-based, in the contig
    length: int
    reverse: bool


def segments(tokens: bytes, n_run: int) -> List[tuple]:
    """[start, end) spans between runs of >= n_run N tokens."""
    if tokens.find(tk.N_BYTE) == -1:
        return [(0, len(tokens))] if tokens else []
    is_n = np.zeros(len(tokens) + 2, dtype=bool)
    np.equal(np.frombuffer(tokens, dtype=np.uint8), tk.N, out=is_n[1:-1])
    edges = np.flatnonzero(is_n[1:] != is_n[:-1])
    run_starts, run_ends = edges[0::2], edges[1::2]
    long_runs = (run_ends - run_starts) >= n_run
    spans, cursor = [], 0
    for start, end in zip(run_starts[long_runs].tolist(), run_ends[long_runs].tolist()):
        if start > cursor:
            spans.append((cursor, start))
        cursor = end
    if cursor < len(tokens):
        spans.append((cursor, len(tokens)))
    return spans


def strand_generator(seed: int, assembly: str, contig: str) -> np.random.Generator:
    digest = hashlib.blake2b(f"{assembly}\x00{contig}".encode(), digest_size=8).digest()
    return np.random.default_rng([seed, int.from_bytes(digest, "little")])


def cut(tokens: bytes, rules: FragmentRules, assembly: str, contig: str,
        genes: Optional[Intervals] = None) -> List[Fragment]:
    spans = []
    for seg_start, seg_end in segments(tokens, rules.n_run):
        for start in range(seg_start, seg_end, rules.seq_len):
            spans.append((start, min(start + rules.seq_len, seg_end)))
    draws = strand_generator(rules.seed, assembly, contig).random(len(spans))
    kept = []
    for (start, end), u in zip(spans, draws.tolist()):
        length = end - start
        if length < rules.min_len:
            continue
        if tokens.find(tk.N_BYTE, start, end) != -1 and \
                tokens.count(tk.N_BYTE, start, end) > rules.max_n_fraction * length:
            continue
        if genes is not None and not near_gene(genes, start, end):
            continue
        kept.append(Fragment(start, length, u < rules.rc_probability))
    return kept


def document(tokens: bytes, fragment: Fragment) -> bytes:
    """The fragment's tokens (reverse-complemented if its strand says so) followed by EOD."""
    piece = tokens[fragment.start:fragment.start + fragment.length]
    return (tk.reverse_complement(piece) if fragment.reverse else piece) + tk.EOD_BYTE
