"""Gene intervals from a GFF3/GTF, for the paper's stage-I filter: keep fragments within W bp of a gene."""
from __future__ import annotations

import gzip
from typing import Dict, List, Tuple

import numpy as np

from .errors import DataPrepError

Intervals = Tuple[np.ndarray, np.ndarray]   # sorted, merged, half-open [start, end) already widened by the window


def read_gene_intervals(path: str, window: int) -> Dict[str, Intervals]:
    """seqid -> merged intervals of every 'gene' feature widened by `window` bp on both sides (0-based)."""
    spans: Dict[str, List[Tuple[int, int]]] = {}
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as handle:
        for line_no, line in enumerate(handle, start=1):
            if line.startswith("#") or not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 8:
                raise DataPrepError(f"{path} line {line_no}: expected 9 tab-separated GFF/GTF columns, "
                                    f"found {len(fields)}")
            if fields[2] != "gene":
                continue
            try:
                start, end = int(fields[3]) - 1, int(fields[4])
            except ValueError:
                raise DataPrepError(f"{path} line {line_no}: start/end {fields[3]!r}/{fields[4]!r} "
                                    f"are not integers") from None
            spans.setdefault(fields[0], []).append((max(0, start - window), end + window))
    if not spans:
        raise DataPrepError(f"{path}: no 'gene' features; the gene-proximity filter needs an annotation with "
                            f"gene lines (GFF3 or GENCODE-style GTF)")
    return {seqid: _merge(pairs) for seqid, pairs in spans.items()}


def _merge(pairs: List[Tuple[int, int]]) -> Intervals:
    pairs.sort()
    starts, ends = [pairs[0][0]], [pairs[0][1]]
    for start, end in pairs[1:]:
        if start <= ends[-1]:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)


def near_gene(intervals: Intervals, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """For each [start, end): does it overlap a widened gene interval?"""
    gene_starts, gene_ends = intervals
    if not len(gene_starts):
        return np.zeros(len(starts), dtype=bool)
    last = np.searchsorted(gene_starts, ends, side="left") - 1      # the last gene starting before each end
    return (last >= 0) & (gene_ends[np.maximum(last, 0)] > starts)
