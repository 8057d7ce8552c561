"""Count-based references for held-out sequence: what order-k Markov models fitted to the training chromosomes
score, in bits per base, next to which a trained model's validation can be read.

    python benchmarks/genome_references.py quickstart/fasta            # fit chr1-4 of the FASTA files, score chr5
    python benchmarks/genome_references.py --pack quickstart/packs/seq256 --samples 128
                                                                       # the trainer's validation samples of a pack

The models are train/count_reference.py's (the ones `nucleotron quickstart` prints): each base predicted from its
longest context up to the order, add-alpha smoothed toward the training composition; lower-case (soft-masked) bases
read as upper case. On FASTA, N (and any other letter) ends contexts and is not scored; on a pack, N is a symbol
as the model sees it. Order 0 is the base composition alone,
the "learns nothing but composition" line; a high order (12) memorises the training set's repeats, a rough bound on
what memory of them is worth.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from nucleotron.train.count_reference import BREAK, ContextCounts, pack_references

CODES = np.full(256, BREAK, dtype=np.int64)
for _code, _base in enumerate(b"ACGT"):
    CODES[_base] = CODES[_base + 32] = _code


def encode(sequence: bytes) -> np.ndarray:
    """0..3 for A, C, G, T (either case); N and every other letter a break: not scored, and no context spans it
    (assembly gaps are hundreds of N, which a pack cuts out of its fragments)."""
    return CODES[np.frombuffer(sequence, dtype=np.uint8)]


def markov_bits(train: Sequence[np.ndarray], test: Sequence[np.ndarray], orders: Sequence[Tuple[int, float]]
                ) -> Dict[int, float]:
    """{order: bits per base} of each (order, alpha) model fitted to `train`, over every base of `test` (each test
    sequence on its own: its first base has no context)."""
    counts = ContextCounts(max(order for order, _ in orders)).fit(train)
    result = {}
    for order, alpha in orders:
        bits = np.concatenate([counts.bits(x, order, alpha) for x in test])
        result[order] = float(np.nanmean(bits))  # NaN at breaks
    return result


def read_chromosomes(path: Path, names: Sequence[str]) -> Dict[str, np.ndarray]:
    import pyfaidx

    fasta = pyfaidx.Fasta(str(path), as_raw=True, sequence_always_upper=True)
    missing = [n for n in names if n not in fasta.keys()]
    if missing:
        raise SystemExit(f"{path} has no record {missing[0]!r} (records: {', '.join(list(fasta.keys())[:10])})")
    return {name: encode(fasta[name][:].encode()) for name in names}


def _orders(text: str) -> List[Tuple[int, float]]:
    try:
        return [(int(order), float(alpha)) for order, alpha in (pair.split(":") for pair in text.split(","))]
    except ValueError:
        raise SystemExit(f"--orders {text!r}: expected order:alpha pairs, comma-separated (e.g. 0:1,6:1,12:4)")


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fasta_dir", type=Path, nargs="?", help="folder of FASTA files (the quickstart's OUT/fasta)")
    parser.add_argument("--fasta", nargs="+", default=["human.fa", "chimp.fa"], help="files in it to use")
    parser.add_argument("--train", nargs="+", default=["chr1", "chr2", "chr3", "chr4"])
    parser.add_argument("--valid", nargs="+", default=["chr5"])
    parser.add_argument("--pack", type=Path, help="score a pack's validation samples instead (fitted to its train "
                                                  "split), as the trainer draws them")
    parser.add_argument("--samples", type=int, default=128,
                        help="with --pack: validation samples per group (train.eval_steps x global_batch_size)")
    parser.add_argument("--orders", default="0:1,3:1,6:1,12:4", help="order:alpha pairs, comma-separated")
    args = parser.parse_args(argv)
    orders = _orders(args.orders)
    if args.pack:
        with tempfile.TemporaryDirectory() as cache:
            bits = pack_references(str(args.pack), args.samples, cache, orders)
        print(f"count-based references: fitted to the train split of {args.pack}, scored on its first "
              f"{args.samples} validation samples per group")
    elif args.fasta_dir:
        train, valid = [], []
        for name in args.fasta:
            chromosomes = read_chromosomes(args.fasta_dir / name, [*args.train, *args.valid])
            train += [chromosomes[c] for c in args.train]
            valid += [chromosomes[c] for c in args.valid]
        bits = markov_bits(train, valid, orders)
        print(f"count-based references: fitted to {', '.join(args.train)}, scored on {', '.join(args.valid)} "
              f"of {', '.join(args.fasta)} ({sum(len(x) for x in valid):,} bases)")
    else:
        parser.error("give a FASTA folder or --pack")
    print(f"{'order':>5} {'alpha':>5} {'bits/base':>9}")
    for order, alpha in orders:
        print(f"{order:>5} {alpha:>5g} {bits[order]:>9.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
