"""`nucleotron score MODEL`: per-sequence log-likelihood and bits per base, or zero-shot variant effects.

    nucleotron score runs/tiny --sequences seqs.fa --out scores.tsv
    nucleotron score runs/tiny --vcf variants.vcf --reference genome.fa --out effects.tsv

MODEL is a run directory, a checkpoint, imported weights or an exported Hugging Face folder.
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import List

from nucleotron.configs.files import write_atomic

from .sequences import InputError, encoder, log_likelihoods, read_sequences, windows


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="RUN_DIR, a checkpoint directory, imported weights, or an exported HF folder")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")


def score_sequences(lm, path: str, batch_size: int, sequence_column: str = "sequence") -> List[dict]:
    ids, sequences = read_sequences(path, sequence_column)
    encode = encoder(lm.vocab)
    pieces, owner = [], []
    for index, (name, sequence) in enumerate(zip(ids, sequences)):
        tokens = encode(sequence, f"{path} record {name!r}")
        if len(tokens) == 0:
            raise InputError(f"{path} record {name!r} is empty; remove it")
        for piece in windows(tokens, lm.vocab["EOD"], lm.seq_len):
            pieces.append(piece)
            owner.append(index)
    totals = [0.0] * len(sequences)
    for index, value in zip(owner, log_likelihoods(lm.model, pieces, batch_size, lm.vocab["PAD"], "sequences")):
        totals[index] += value
    return [{"id": name, "bases": len(seq), "log_likelihood": total,
             "bits_per_base": -total / len(seq) / math.log(2)}
            for name, seq, total in zip(ids, sequences, totals)]


def score_variants(lm, vcf: str, reference_path: str, window: int, batch_size: int, on_error: str):
    from .variants import Reference, collect_windows

    if window + 1 > lm.seq_len:
        raise InputError(f"--window {window} is longer than the model's {lm.seq_len - 1}-base context")
    variants, pairs, skipped = collect_windows(vcf, Reference(reference_path), window, on_error)
    encode = encoder(lm.vocab)
    eod = lm.vocab["EOD"]
    unique = {}
    for pair in pairs:
        for text in pair:
            unique.setdefault(text, len(unique))
    texts = list(unique)
    tokens = [windows(encode(t, "window"), eod, len(t) + 1)[0] for t in texts]
    values = log_likelihoods(lm.model, tokens, batch_size, lm.vocab["PAD"], "variant windows")
    rows = [{"chrom": v.chrom, "pos": v.pos, "ref": v.ref, "alt": v.alt,
             "score": values[unique[alt]] - values[unique[ref]]} for v, (ref, alt) in zip(variants, pairs)]
    return rows, skipped


def write_tsv(path: str, rows: List[dict], columns: List[str]) -> None:
    lines = ["\t".join(columns)]
    for row in rows:
        lines.append("\t".join(f"{row[c]:.9g}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    write_atomic(path, "\n".join(lines) + "\n")


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="nucleotron score", description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--sequences", help="FASTA (.fa/.fasta/.fna[.gz]) or table (.tsv/.csv/.parquet)")
    what.add_argument("--vcf", help="VCF of SNVs and short indels (needs --reference)")
    parser.add_argument("--sequence-column", default="sequence", help="table column with the sequences")
    parser.add_argument("--reference", help="reference FASTA of the VCF's chromosomes")
    parser.add_argument("--window", type=int, default=None,
                        help="variant window in bases (default: the model's context, seq_len - 1)")
    parser.add_argument("--on-error", choices=["stop", "skip"], default="stop",
                        help="a bad VCF line: stop (default) or report it and skip it")
    parser.add_argument("--out", required=True, help="output TSV")
    args = parser.parse_args(argv)
    if args.vcf and not args.reference:
        parser.error("--vcf needs --reference FASTA")

    from .checkpoint import CheckpointError
    from .loading import load_model

    try:
        lm = load_model(args.model, args.device)
        if args.sequences:
            rows = score_sequences(lm, args.sequences, args.batch_size, args.sequence_column)
            write_tsv(args.out, rows, ["id", "bases", "log_likelihood", "bits_per_base"])
            print(f"scored {len(rows)} sequence(s) -> {args.out}")
        else:
            rows, skipped = score_variants(lm, args.vcf, args.reference, args.window or lm.seq_len - 1,
                                           args.batch_size, args.on_error)
            write_tsv(args.out, rows, ["chrom", "pos", "ref", "alt", "score"])
            print(f"scored {len(rows)} variant(s) -> {args.out}" + (f"; {skipped} bad line(s) skipped" if skipped
                                                                    else ""))
    except (InputError, CheckpointError) as err:
        print(f"nucleotron score: {err}", file=sys.stderr)
        return 2
    return 0
