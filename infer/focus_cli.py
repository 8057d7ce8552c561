"""`nucleotron focus`: summary-token context compression on a frozen Nucleotron checkpoint.

    nucleotron focus train --checkpoint CKPT --config configs/experiments/focus-tiny.yaml data.packs=DIR run.dir=RUN
    nucleotron focus score CKPT --adapter RUN|focus.safetensors --sequences seqs.fa --out scores.tsv [focus.KEY=VALUE]
    nucleotron focus eval CKPT --adapter RUN|focus.safetensors --sequences held_out.fa --out DIR [focus.KEY=VALUE]

train is `nucleotron train` with focus.base_checkpoint=CKPT (train/engines/focus.py: the same loop, checkpoints,
resume, metrics and validation; torchrun / `nucleotron launch` run it data-parallel with that override); score
streams each sequence window by window (KV memory ~ L/k + W, any length) and writes the same columns as
`nucleotron score`; eval compares FOCUS with the uncompressed model (infer/focus_eval.py).
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import List

SUBCOMMANDS = {"train": "train an adapter on a frozen checkpoint (the training loop; resumes from RUN_DIR)",
               "score": "stream sequences of any length and write log-likelihoods",
               "eval": "fidelity vs the uncompressed model, KV entries and memory vs length (JSON + plot)"}


def train_main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nucleotron focus train",
        description="Train a FOCUS adapter (summary embedding + adapter projections) on a frozen checkpoint, on "
                    "token packs, through `nucleotron train`'s loop: re-running the command resumes from "
                    "RUN_DIR/checkpoints/latest; SIGTERM/SIGUSR1 save and exit 75. Equivalent to `nucleotron train "
                    "--config FILE focus.base_checkpoint=CKPT ...`, which torchrun and `nucleotron launch` run.")
    parser.add_argument("--checkpoint", required=True, help="the frozen base model: RUN_DIR or a checkpoint directory "
                        "of a GPT-family run (its newest complete checkpoint)")
    parser.add_argument("--config", required=True, help="run settings and focus.*, e.g. "
                        "configs/experiments/focus-tiny.yaml (the model comes from the checkpoint)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.packs=DIR run.dir=RUN focus.k=16")
    args = parser.parse_args(argv)
    from nucleotron.configs import ConfigError

    if any(item.startswith("focus.base_checkpoint=") for item in args.overrides):
        print("nucleotron focus train: pass the frozen checkpoint as --checkpoint, not focus.base_checkpoint=",
              file=sys.stderr)
        return 2
    try:
        from nucleotron.train.engines.focus import read_base

        base = read_base(args.checkpoint)  # fail in a second, naming the path, before the loop starts
    except ConfigError as err:
        print(f"nucleotron focus train: {err}", file=sys.stderr)
        return 2
    from nucleotron.train.cli import main as train

    return train(["--config", args.config, *args.overrides, f"focus.base_checkpoint={base.directory}"])


def score_main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="nucleotron focus score", description="Per-sequence log-likelihood and "
                                     "bits per base from streaming FOCUS inference.")
    parser.add_argument("checkpoint", help="the frozen base model: RUN_DIR or a checkpoint directory")
    parser.add_argument("--adapter", required=True, help="trained adapter: a `focus train` RUN_DIR or checkpoint, or "
                        "its .safetensors file")
    parser.add_argument("--sequences", required=True, help="FASTA (.fa/.fasta/.fna, .gz too)")
    parser.add_argument("--focus-config", help="YAML with a focus: section (configs/focus/*.yaml), applied over "
                        "the adapter's settings")
    parser.add_argument("--out", required=True, help="output TSV")
    parser.add_argument("overrides", nargs="*", help="focus.KEY=VALUE (e.g. focus.summary_memory=64)")
    args = parser.parse_intermixed_args(argv)

    import torch

    from nucleotron.configs.files import write_atomic

    from .focus_io import encode_records, open_focus
    from .focus_stream import FocusStreamer

    try:
        with open_focus(args.checkpoint, args.adapter, args.overrides, args.focus_config) as (model, vocab, _):
            names, records = encode_records(args.sequences, vocab)
            device = next(model.parameters()).device
            streamer = FocusStreamer(model)
            rows = []
            for name, ids in zip(names, records):
                total = float(streamer.score(torch.from_numpy(ids).to(device)[None]).double().sum())
                rows.append({"id": name, "bases": len(ids) - 1, "log_likelihood": total,
                             "bits_per_base": -total / (len(ids) - 1) / math.log(2)})
    except ValueError as err:  # CheckpointError, ConfigError, SequenceError and model-wrapping errors
        print(f"nucleotron focus score: {err}", file=sys.stderr)
        return 2
    lines = ["id\tbases\tlog_likelihood\tbits_per_base"]
    lines += [f"{r['id']}\t{r['bases']}\t{r['log_likelihood']:.9g}\t{r['bits_per_base']:.9g}" for r in rows]
    write_atomic(args.out, "\n".join(lines) + "\n")
    print(f"scored {len(rows)} sequence(s) with FOCUS -> {args.out}")
    return 0


def usage() -> str:
    lines = [__doc__.split("\n\n")[0], "", "subcommands:"]
    lines += [f"  {name:<6} {text}" for name, text in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: List[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name == "train":
        return train_main(rest)
    if name == "score":
        return score_main(rest)
    if name == "eval":
        from .focus_eval import main as eval_main

        return eval_main(rest)
    print(f"nucleotron focus: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
    return 2
