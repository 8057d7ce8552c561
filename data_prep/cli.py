"""`nucleotron data {fetch,prep,verify,stats,export-hf}`: argument parsing only; each subcommand lives in its own
module."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from .errors import DataPrepError


def _csv(value: str) -> List[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nucleotron data", description="DNA FASTA -> token packs for training.")
    sub = parser.add_subparsers(dest="command", required=True)

    fetch = sub.add_parser("fetch", help="download the FASTA files of a source manifest (resumable, verified)")
    fetch.add_argument("manifest", help="source manifest TSV, e.g. configs/data/references.tsv")
    fetch.add_argument("--out", required=True, help="download folder; also gets sources.tsv for `data prep`")
    fetch.add_argument("--jobs", type=int, default=4, help="parallel downloads (default 4)")
    fetch.add_argument("--retries", type=int, default=5, help="attempts per file, resuming each time (default 5)")
    fetch.add_argument("--only", type=_csv, default=None, help="comma-separated assembly names to fetch")

    prep = sub.add_parser("prep", help="FASTA -> .bin/.idx packs per group and split, with manifest.json")
    prep.add_argument("--sources", required=True, help="TSV with columns path, group, assembly "
                                                       "[, species, annotation, chrom_map]")
    prep.add_argument("--group-weights", default=None, metavar="NAME=W,...",
                      help="the groups of the sources' 'group' column and their token shares, normalised to sum to "
                           "1, e.g. prokaryote=1 (one group, dnaHNet's GTDB recipe) or a=0.5,b=0.3,c=0.2 "
                           "(default: human=0.5,nonhuman=0.5, the paper's 1:1 mix)")
    prep.add_argument("--seq-len", type=int, required=True, help="fragment length in bases (8192, 32768, ...)")
    prep.add_argument("--out", required=True, help="pack directory to create")
    prep.add_argument("--min-len", type=int, default=None,
                      help="keep a segment's tail shorter than seq-len if it has >= this many bases "
                           "(default seq-len/4)")
    prep.add_argument("--split-n-run", type=int, default=100, help="N runs this long split a contig (default 100)")
    prep.add_argument("--max-n-fraction", type=float, default=0.1,
                      help="drop fragments with a larger fraction of N (default 0.1)")
    prep.add_argument("--rc-probability", type=float, default=0.0,
                      help="probability of reverse-complementing a fragment (0 = forward only; paper 32k: 0.56)")
    prep.add_argument("--seed", type=int, default=1234, help="strand seed (default 1234)")
    prep.add_argument("--gene-window", type=int, default=None,
                      help="keep only fragments within this many bp of a gene of the source's annotation "
                           "(paper 8k: 5120); off when omitted")
    prep.add_argument("--soft-mask", action="store_true",
                      help="keep soft-masking (lower-case repeats) as bit 128 on each token, for "
                           "data.soft_masked_loss_weight in training (default: plain upper-case ids)")
    prep.add_argument("--valid-chroms", type=_csv, default=[], help="e.g. chr20")
    prep.add_argument("--test-chroms", type=_csv, default=[], help="e.g. chr21,chr22")
    prep.add_argument("--allow-unsplit-human", action="store_true",
                      help="with held-out chromosomes, let human assemblies whose records carry no chromosome names "
                           "(HPRC contigs without a chrom_map) go entirely to train instead of stopping; they may "
                           "leak held-out sequence into train")
    prep.add_argument("--allow-duplicate-sources", action="store_true",
                      help="allow one file, or files with identical contents, in several rows (their tokens then "
                           "count several times); refused by default")
    prep.add_argument("--workers", type=int, default=None, help="processes, >= 1 (default: all cores)")
    prep.add_argument("--work-dir", default=None, help="resumable work files (default OUT.work)")
    prep.add_argument("--overwrite", action="store_true", help="replace an existing OUT (atomic swap)")
    prep.add_argument("--keep-work", action="store_true", help="keep the work dir after success")
    prep.add_argument("--no-progress", action="store_true", help="no progress bar")

    verify = sub.add_parser("verify", help="check a pack's files against the sizes and checksums in its manifest")
    verify.add_argument("dir", help="pack directory")
    verify.add_argument("--full", action="store_true",
                        help="hash every byte (default: sizes, index headers and sampled blocks, ~1 MiB per file)")

    stats = sub.add_parser("stats", help="tokens, mix, N fraction and GC content of a pack")
    stats.add_argument("dir", help="pack directory")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")

    export = sub.add_parser("export-hf", help="write a pack as a Hugging Face datasets Parquet dataset")
    export.add_argument("dir", help="pack directory")
    export.add_argument("out", help="output folder (must not exist)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "fetch":
            from .fetch import fetch_manifest
            fetch_manifest(args.manifest, args.out, jobs=args.jobs, retries=args.retries, only=args.only)
        elif args.command == "prep":
            from .groups import parse_group_weights
            from .prep import PrepOptions, run_prep
            weights = None if args.group_weights is None else parse_group_weights(args.group_weights)
            run_prep(PrepOptions(
                sources=args.sources, seq_len=args.seq_len, out=args.out, min_len=args.min_len,
                n_run=args.split_n_run, max_n_fraction=args.max_n_fraction, rc_probability=args.rc_probability,
                seed=args.seed, gene_window=args.gene_window, soft_mask=args.soft_mask, valid_chroms=args.valid_chroms,
                test_chroms=args.test_chroms, allow_unsplit_human=args.allow_unsplit_human,
                allow_duplicate_sources=args.allow_duplicate_sources, group_weights=weights, workers=args.workers,
                work_dir=args.work_dir, overwrite=args.overwrite, keep_work=args.keep_work,
                progress=not args.no_progress))
        elif args.command == "verify":
            from .verify import verify_pack
            verify_pack(args.dir, full=args.full)
            print(f"{args.dir}: ok ({'full' if args.full else 'sampled'} check)")
        elif args.command == "stats":
            from .stats import format_stats, pack_stats
            result = pack_stats(args.dir)
            print(json.dumps(result, indent=2) if args.json else format_stats(result))
        elif args.command == "export-hf":
            from .export_hf import export_hf
            export_hf(args.dir, args.out)
    except DataPrepError as err:
        print(f"nucleotron data {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0
