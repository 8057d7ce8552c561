"""Count-based references for a held-out chromosome: what order-k Markov models fitted to the training chromosomes
score on it, in bits per base, next to which a trained model's validation can be read.

    python benchmarks/genome_references.py quickstart/fasta    # the quickstart's genome: fit chr1-4, score chr5

Each order-k model counts (k bases, next base) over the training chromosomes of every FASTA given (N-free contexts
only) and predicts with add-alpha smoothing toward the training base composition:
p(b | ctx) = (count(ctx, b) + alpha * p0(b)) / (count(ctx) + alpha). Order 0 is the base composition alone, the
"learns nothing but composition" line; a high order (12) memorises the training set's repeats, a rough bound on
what memory of them is worth. Lower-case (soft-masked) bases count as upper case; positions whose context or target
holds N are not scored.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

CODES = np.full(256, 4, dtype=np.int64)
for _code, _base in enumerate(b"ACGT"):
    CODES[_base] = CODES[_base + 32] = _code


def encode(sequence: bytes) -> np.ndarray:
    """0..3 for A, C, G, T (either case), 4 for anything else."""
    return CODES[np.frombuffer(sequence, dtype=np.uint8)]


def context_codes(x: np.ndarray, order: int) -> Tuple[np.ndarray, np.ndarray]:
    """(code of the order + 1 bases ending at t, for each t >= order whose window is N-free; those t)."""
    bad = np.concatenate([[0], np.cumsum(x == 4)])
    ends = np.arange(order, len(x))
    ends = ends[bad[ends + 1] - bad[ends - order] == 0]
    code = np.zeros(len(ends), dtype=np.int64)
    for offset in range(order, -1, -1):
        code = code * 4 + x[ends - offset]
    return code, ends


def markov_bits(train: Sequence[np.ndarray], test: Sequence[np.ndarray], order: int, alpha: float) -> float:
    """Bits per base of the add-alpha order-`order` model fitted to `train`, on `test`."""
    bases = np.concatenate([x[x < 4] for x in train])
    p0 = np.bincount(bases, minlength=4) / len(bases)
    if order == 0:
        scored = np.concatenate([x[x < 4] for x in test])
        return float(-np.log2(p0[scored]).mean())
    joint, joint_counts = np.unique(np.concatenate([context_codes(x, order)[0] for x in train]), return_counts=True)
    contexts, inverse = np.unique(joint // 4, return_inverse=True)
    context_counts = np.bincount(inverse, weights=joint_counts)
    total, scored = 0.0, 0
    for x in test:
        code, _ = context_codes(x, order)
        at = np.clip(np.searchsorted(joint, code), 0, len(joint) - 1)
        count = np.where(joint[at] == code, joint_counts[at], 0)
        at = np.clip(np.searchsorted(contexts, code // 4), 0, len(contexts) - 1)
        context_count = np.where(contexts[at] == code // 4, context_counts[at], 0)
        p = (count + alpha * p0[code % 4]) / (context_count + alpha)
        total += float(-np.log2(p).sum())
        scored += len(code)
    return total / scored


def read_chromosomes(path: Path, names: Sequence[str]) -> Dict[str, np.ndarray]:
    import pyfaidx

    fasta = pyfaidx.Fasta(str(path), as_raw=True, sequence_always_upper=True)
    missing = [n for n in names if n not in fasta.keys()]
    if missing:
        raise SystemExit(f"{path} has no record {missing[0]!r} (records: {', '.join(list(fasta.keys())[:10])})")
    return {name: encode(fasta[name][:].encode()) for name in names}


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fasta_dir", type=Path, help="folder of FASTA files (the quickstart's OUT/fasta)")
    parser.add_argument("--fasta", nargs="+", default=["human.fa", "chimp.fa"], help="files in it to use")
    parser.add_argument("--train", nargs="+", default=["chr1", "chr2", "chr3", "chr4"])
    parser.add_argument("--valid", nargs="+", default=["chr5"])
    parser.add_argument("--orders", default="0:1,3:1,6:1,12:4", help="order:alpha pairs, comma-separated")
    args = parser.parse_args(argv)
    train, valid = [], []
    for name in args.fasta:
        chromosomes = read_chromosomes(args.fasta_dir / name, [*args.train, *args.valid])
        train += [chromosomes[c] for c in args.train]
        valid += [chromosomes[c] for c in args.valid]
    print(f"count-based references: fitted to {', '.join(args.train)}, scored on {', '.join(args.valid)} "
          f"of {', '.join(args.fasta)} ({sum(len(x) for x in valid):,} bases)")
    print(f"{'order':>5} {'alpha':>5} {'bits/base':>9}")
    for pair in args.orders.split(","):
        order, alpha = pair.split(":")
        print(f"{int(order):>5} {float(alpha):>5g} {markov_bits(train, valid, int(order), float(alpha)):>9.4f}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
