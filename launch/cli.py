"""The `nucleotron` console script: a thin dispatcher that imports a subcommand's module only when it runs.

Startup stays well under a second because torch, megatron-core and Triton are imported by the subcommand, not here.
Each subcommand module exposes `main(argv) -> int` and parses its own arguments.
"""
from __future__ import annotations

import importlib
import sys
from typing import List, Optional

# name -> (module with main(argv), one-line help). Commands appear here once they work.
COMMANDS = {
    "model": ("nucleotron.model.cli", "inspect a model config: architecture and total/active parameter counts"),
    "data": ("nucleotron.data_prep.cli", "DNA FASTA -> token packs: fetch, prep, stats, export-hf"),
    "train": ("nucleotron.train.cli", "train a model from a config on token packs (auto-resumes from RUN_DIR)"),
    "quickstart": ("nucleotron.train.quickstart", "CPU demo: synthetic genome -> packs -> baseline vs Gengram runs"),
    "launch": ("nucleotron.launch.commands", "start runs: slurm (sbatch, requeue-safe), local (torchrun), sweep"),
    "report": ("nucleotron.launch.report", "final validation loss per run next to the paper's numbers"),
    "focus": ("nucleotron.infer.focus_cli", "FOCUS context compression on a frozen checkpoint: streaming score, eval"),
    "export": ("nucleotron.infer.export_hf", "export a checkpoint: hf (Hugging Face folder, trust_remote_code)"),
    "import": ("nucleotron.infer.import_gengram", "import weights: gengram-megatron (released Megatron checkpoint)"),
    "score": ("nucleotron.infer.score", "log-likelihood / bits per base of sequences; zero-shot VCF variant effects"),
    "embed": ("nucleotron.infer.embed", "per-sequence or per-position embeddings of a layer to Parquet / NumPy"),
    "eval": ("nucleotron.infer.probe", "eval probe: frozen features + cross-validated logistic regression -> JSON"),
    "analyze": ("nucleotron.infer.analyze", "interpretability: Gengram gate and write tracks, k-mer table rows"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: nucleotron <command> [args...]", "", "Pretrain single-nucleotide DNA language models "
             "with Gengram layers on megatron-core.", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'nucleotron <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"nucleotron: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
