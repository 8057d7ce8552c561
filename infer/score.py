"""`nucleotron score MODEL`: per-sequence log-likelihood and bits per base, or zero-shot variant effects.

    nucleotron score runs/tiny --sequences seqs.fa --out scores.tsv
    nucleotron score runs/tiny --vcf variants.vcf --reference genome.fa --out effects.tsv
    nucleotron score runs/hnet --sequences seqs.fa --out scores.tsv --mode step --boundaries boundaries.tsv

MODEL is a run directory, a checkpoint, imported weights or an exported Hugging Face folder. H-Net (dnaHNet)
checkpoints score through the parallel forward (`--mode parallel`, default) or the recurrent step path
(`--mode step`, one token at a time: slower, the path generation uses; the two agree), and `--boundaries FILE`
writes every routing stage's boundary probability per base (columns id, position, stage, p, selected).
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import List, Optional

from nucleotron.configs.files import write_atomic

from .sequences import InputError, encoder, log_likelihoods, read_sequences, windows


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="RUN_DIR, a checkpoint directory, imported weights, or an exported HF folder")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")


def _log_likelihoods(lm, token_lists, batch_size: int, progress: str, mode: str = "parallel"):
    """(log-likelihood per token list, H-Net scores with boundary traces or None) for either model family."""
    if lm.arch == "hnet":
        from .hnet_scoring import hnet_scores

        scores = hnet_scores(lm.model, token_lists, batch_size, lm.vocab["PAD"], mode, progress)
        return [s.log_likelihood for s in scores], scores
    return log_likelihoods(lm.model, token_lists, batch_size, lm.vocab["PAD"], progress), None


def check_options(lm, mode: str, boundaries: Optional[str]) -> None:
    """Options of one model family used on the other are refused by name."""
    if lm.arch != "hnet":
        if mode != "parallel":
            raise InputError(f"--mode {mode}: the step path exists for H-Net models only; {lm.identity['path']} is "
                             f"a GPT-family model, scored with its parallel forward (drop --mode)")
        if boundaries:
            raise InputError(f"--boundaries: {lm.identity['path']} is a GPT-family model, which has no routing "
                             f"stages; boundary probabilities come from H-Net (model.arch=hnet) checkpoints")


def score_sequences(lm, path: str, batch_size: int, sequence_column: str = "sequence", mode: str = "parallel",
                    boundaries: Optional[str] = None) -> List[dict]:
    """One row per sequence; with `boundaries`, also a TSV of each routing stage's p and selection per base
    (H-Net): position is the 1-based base position in the sequence; stage s > 1 lists the bases stage s - 1
    selected."""
    check_options(lm, mode, boundaries)
    ids, sequences = read_sequences(path, sequence_column)
    encode = encoder(lm.vocab)
    pieces, owner, offsets = [], [], []
    for index, (name, sequence) in enumerate(zip(ids, sequences)):
        tokens = encode(sequence, f"{path} record {name!r}")
        if len(tokens) == 0:
            raise InputError(f"{path} record {name!r} is empty; remove it")
        for number, piece in enumerate(windows(tokens, lm.vocab["EOD"], lm.seq_len)):
            pieces.append(piece)
            owner.append(index)
            offsets.append(number * (lm.seq_len - 1))   # bases before this window
    totals = [0.0] * len(sequences)
    values, traces = _log_likelihoods(lm, pieces, batch_size, "sequences", mode)
    for index, value in zip(owner, values):
        totals[index] += value
    if boundaries:
        write_boundaries(boundaries, [(ids[i], offset, score.stages) for i, offset, score in
                                      zip(owner, offsets, traces)])
    return [{"id": name, "bases": len(seq), "log_likelihood": total,
             "bits_per_base": -total / len(seq) / math.log(2)}
            for name, seq, total in zip(ids, sequences, totals)]


def write_boundaries(path: str, windows_of: list) -> None:
    """TSV id, position, stage, p, selected from (sequence id, bases before the window, stage traces) per window;
    the EOD in front of each window is context, not a base, and is left out."""
    lines = ["id\tposition\tstage\tp\tselected"]
    for name, offset, stages in windows_of:
        for stage, trace in enumerate(stages, start=1):
            for position, p, chosen in zip(trace.positions.tolist(), trace.prob.tolist(), trace.selected.tolist()):
                if position > 0:
                    lines.append(f"{name}\t{offset + position}\t{stage}\t{p:.9g}\t{int(chosen)}")
    write_atomic(path, "\n".join(lines) + "\n")


def score_variants(lm, vcf: str, reference_path: str, window: int, batch_size: int, on_error: str,
                   mode: str = "parallel"):
    from .variants import Reference, collect_windows

    check_options(lm, mode, None)
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
    values, _ = _log_likelihoods(lm, tokens, batch_size, "variant windows", mode)
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
    parser.add_argument("--mode", choices=["parallel", "step"], default="parallel",
                        help="H-Net models: the parallel forward (default) or the recurrent step path, one token at "
                             "a time (same log-likelihoods; GPT models have only the parallel forward)")
    parser.add_argument("--boundaries", default=None, metavar="TSV",
                        help="H-Net models with --sequences: write each routing stage's boundary probability per base "
                             "(columns id, position, stage, p, selected)")
    args = parser.parse_args(argv)
    if args.vcf and not args.reference:
        parser.error("--vcf needs --reference FASTA")
    if args.boundaries and not args.sequences:
        parser.error("--boundaries needs --sequences (variant windows are not traced)")

    from .checkpoint import CheckpointError
    from .loading import load_model

    try:
        lm = load_model(args.model, args.device, allow_hnet=True)
        if args.sequences:
            rows = score_sequences(lm, args.sequences, args.batch_size, args.sequence_column, args.mode,
                                   args.boundaries)
            write_tsv(args.out, rows, ["id", "bases", "log_likelihood", "bits_per_base"])
            print(f"scored {len(rows)} sequence(s) -> {args.out}"
                  + (f"; boundaries -> {args.boundaries}" if args.boundaries else ""))
        else:
            rows, skipped = score_variants(lm, args.vcf, args.reference, args.window or lm.seq_len - 1,
                                           args.batch_size, args.on_error, args.mode)
            write_tsv(args.out, rows, ["chrom", "pos", "ref", "alt", "score"])
            print(f"scored {len(rows)} variant(s) -> {args.out}" + (f"; {skipped} bad line(s) skipped" if skipped
                                                                    else ""))
    except (InputError, CheckpointError) as err:
        print(f"nucleotron score: {err}", file=sys.stderr)
        return 2
    return 0
