"""Synthetic genomes that look like real assemblies (soft-masked runs, N gaps, IUPAC codes), for tests and benchmarks."""
from __future__ import annotations

import gzip
from typing import Dict, Iterable, Tuple

import numpy as np


def random_contig(rng: np.random.Generator, length: int, masked_fraction: float = 0.4, gaps: int = 2,
                  gap_len: Tuple[int, int] = (100, 5000), short_n: int = 3, iupac: int = 0) -> bytes:
    """ACGT with lower-case runs (repeats), `gaps` long N runs, `short_n` isolated N's and `iupac` ambiguity codes."""
    seq = np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, length)].copy()
    masked = int(length * masked_fraction)
    while masked > 0:
        run = int(min(masked, rng.integers(50, 2000)))
        start = int(rng.integers(0, max(1, length - run)))
        seq[start:start + run] += 32                      # upper -> lower case
        seq[start:start + run] = np.where(seq[start:start + run] > ord("z"), seq[start:start + run] - 32,
                                          seq[start:start + run])
        masked -= run
    for _ in range(gaps):
        run = int(rng.integers(*gap_len))
        start = int(rng.integers(0, max(1, length - run)))
        seq[start:start + run] = ord("N")
    for code, count in ((b"N", short_n), (b"RYKMSWBDHV", iupac)):
        for _ in range(count):
            seq[int(rng.integers(0, length))] = code[int(rng.integers(0, len(code)))]
    return seq.tobytes()


def wrap(seq: bytes, width: int = 60) -> bytes:
    """FASTA body lines of `width` bases."""
    arr = np.frombuffer(seq, dtype=np.uint8)
    full = len(arr) // width * width
    body = np.full((full // width, width + 1), ord("\n"), dtype=np.uint8)
    body[:, :width] = arr[:full].reshape(-1, width)
    tail = seq[full:] + b"\n" if full < len(arr) else b""
    return body.tobytes() + tail


def write_fasta(path: str, records: Iterable[Tuple[str, bytes]], width: int = 60, compress: bool = False) -> None:
    opener = gzip.open if compress else open
    with opener(path, "wb") as handle:
        for header, seq in records:
            handle.write(b">" + header.encode() + b"\n")
            handle.write(wrap(seq, width))


def make_genome(seed: int, contigs: Dict[str, int], **kwargs) -> Dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {name: random_contig(rng, length, **kwargs) for name, length in contigs.items()}
