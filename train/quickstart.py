"""`nucleotron quickstart`: the whole workflow on a CPU in a few minutes, with nothing to download.

1. writes a small synthetic two-group genome (human-like and chimp-like FASTA) with things a k-mer memory can use:
   a vocabulary of recurring motifs, soft-masked copies of a repeat family, and N gaps;
2. runs `nucleotron data prep` on it (train split, chr5 held out for validation);
3. runs `nucleotron train` twice with configs/experiments/tiny-cpu.yaml: a baseline without Gengram and the same model
   with Gengram, W&B in offline mode;
4. prints both validation losses side by side and where the runs and logs are.

Each step is the command a user would type, printed before it runs; re-running the quickstart reuses the pack and
resumes (or just reports) finished runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

from nucleotron.configs import CONFIG_ROOT

BASES = np.frombuffer(b"ACGT", dtype=np.uint8)
COMPLEMENT = bytes.maketrans(b"ACGTacgtN", b"TGCAtgcaN")


def _random_bases(rng: np.random.Generator, n: int) -> np.ndarray:
    return BASES[rng.integers(0, 4, n)]


def _motif_genome(rng: np.random.Generator, motifs: List[np.ndarray], repeat: np.ndarray, length: int,
                  motif_rate: float, divergence: float) -> bytes:
    """Background bases with motifs planted at `motif_rate` per base, soft-masked repeat copies and two N gaps."""
    seq = _random_bases(rng, length)
    position = int(rng.integers(0, 50))
    while position < length - 40:
        motif = motifs[int(rng.integers(0, len(motifs)))]
        seq[position:position + len(motif)] = motif
        position += len(motif) + int(rng.geometric(motif_rate))
    text = bytearray(seq.tobytes())
    for _ in range(length // 20_000):  # repeat-family copies, ~8% divergent, lower case like RepeatMasker output
        copy = repeat.copy()
        mutate = rng.random(len(copy)) < 0.08
        copy[mutate] = _random_bases(rng, int(mutate.sum()))
        start = int(rng.integers(0, length - len(copy)))
        text[start:start + len(copy)] = copy.tobytes().lower()
    if divergence:  # the other species: point substitutions everywhere
        where = np.flatnonzero(rng.random(length) < divergence)
        for index, base in zip(where, _random_bases(rng, len(where))):
            text[index] = base if text[index] < 97 else base + 32
    for _ in range(2):  # assembly gaps
        start, run = int(rng.integers(0, length - 600)), int(rng.integers(150, 500))
        text[start:start + run] = b"N" * run
    return bytes(text)


def write_genomes(out: Path, megabases: float, seed: int = 2026) -> Path:
    """human.fa and chimp.fa (5 chromosomes each; chimp ~2% diverged, half its motifs its own) and sources.tsv."""
    rng = np.random.default_rng(seed)
    shared = [_random_bases(rng, int(rng.integers(16, 32))) for _ in range(16)]
    chimp_only = [_random_bases(rng, int(rng.integers(16, 32))) for _ in range(8)]
    repeat = _random_bases(rng, 300)
    per_chrom = int(megabases * 1e6 / 2 / 5)
    out.mkdir(parents=True, exist_ok=True)
    for name, motifs, divergence in (("human", shared, 0.0), ("chimp", shared[:8] + chimp_only, 0.02)):
        with open(out / f"{name}.fa.tmp", "w") as handle:
            for chrom in range(1, 6):
                seq = _motif_genome(rng, motifs, repeat, per_chrom, motif_rate=0.05, divergence=divergence)
                handle.write(f">chr{chrom}\n")
                for i in range(0, len(seq), 80):
                    handle.write(seq[i:i + 80].decode() + "\n")
        os.replace(out / f"{name}.fa.tmp", out / f"{name}.fa")
    (out / "sources.tsv").write_text("path\tgroup\tassembly\tspecies\n"
                                     "human.fa\thuman\tsynthetic-human\tHomo sapiens (synthetic)\n"
                                     "chimp.fa\tnonhuman\tsynthetic-chimp\tPan troglodytes (synthetic)\n")
    return out / "sources.tsv"


def _run(command: List[str]) -> None:
    shown = " ".join(["nucleotron"] + command[3:])
    print(f"\n$ {shown}", flush=True)
    result = subprocess.run(command)
    if result.returncode != 0:
        raise SystemExit(f"nucleotron quickstart: `{shown}` failed with exit status {result.returncode}")


def _nucleotron(*args: str) -> List[str]:
    return [sys.executable, "-m", "nucleotron.launch.cli", *args]


def _final_validation(run_dir: Path) -> Dict[str, float]:
    with open(run_dir / "metrics.jsonl") as handle:
        valid = [json.loads(line) for line in handle if '"kind": "valid"' in line]
    if not valid:
        raise SystemExit(f"nucleotron quickstart: {run_dir}/metrics.jsonl holds no validation result")
    return valid[-1]


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nucleotron quickstart",
        description="CPU demo with no downloads: synthetic genome -> packs -> a baseline and a Gengram model.")
    parser.add_argument("--out", default="quickstart", help="working folder (default ./quickstart)")
    parser.add_argument("--steps", type=int, default=400, help="training steps per model (default 400)")
    parser.add_argument("--genome-mb", type=float, default=2.0, help="synthetic genome size in Mb (default 2)")
    parser.add_argument("--seq-len", type=int, default=256, help="pack sequence length (default 256)")
    parser.add_argument("--wandb", choices=("offline", "off"), default="offline",
                        help="W&B logging of both runs (default offline: no account or network needed)")
    args = parser.parse_args(argv)

    out = Path(args.out).resolve()
    config = str(CONFIG_ROOT / "experiments" / "tiny-cpu.yaml")
    pack = out / "packs" / f"seq{args.seq_len}"
    print(f"nucleotron quickstart: everything goes to {out}", flush=True)
    if not (pack / "manifest.json").is_file():
        sources = write_genomes(out / "fasta", args.genome_mb)
        print(f"wrote a {args.genome_mb:g} Mb synthetic two-group genome to {sources.parent}", flush=True)
        _run(_nucleotron("data", "prep", "--sources", str(sources), "--seq-len", str(args.seq_len), "--out",
                         str(pack), "--valid-chroms", "chr5", "--no-progress"))
    runs = {"baseline": ["model.gengram.layers=[]"], "gengram": []}
    common = [f"data.packs={pack}", f"train.max_steps={args.steps}", "train.global_batch_size=8", f"train.eval_every={args.steps}",
              f"checkpoint.every={args.steps}", f"train.log_every={max(1, args.steps // 10)}"]
    if args.wandb == "offline":
        common += ["logging.wandb=true", "logging.wandb_mode=offline", "logging.wandb_project=nucleotron-quickstart"]
    for name, extra in runs.items():
        _run(_nucleotron("train", "--config", config, f"run.dir={out / 'runs' / name}", f"run.name=quickstart-{name}",
                         *common, *extra))

    results = {name: _final_validation(out / "runs" / name) for name in runs}
    print(f"\nvalidation after {args.steps} steps (chr5 of both synthetic species, held out):")
    print(f"{'run':<10} {'loss':>8} {'bits/base':>10} {'human':>8} {'nonhuman':>9}")
    for name, r in results.items():
        print(f"{name:<10} {r['loss']:>8.4f} {r['bits_per_base']:>10.4f} {r['human/loss']:>8.4f} "
              f"{r['nonhuman/loss']:>9.4f}")
    delta = results["gengram"]["loss"] - results["baseline"]["loss"]
    print(f"Gengram - baseline: {delta:+.4f} nats/base")
    print(f"\nruns: {out / 'runs'}/{{baseline,gengram}} (config.yaml, metrics.jsonl, checkpoints/)")
    if args.wandb == "offline":
        print(f"W&B offline logs: {out / 'runs'}/*/wandb (upload later with `wandb sync <dir>`)")
    print("next: real data with `nucleotron data fetch` / `data prep`, a paper config from configs/models/, "
          "and `nucleotron launch slurm` (see README)")
    return 0
