"""Helpers for tests that run `nucleotron train` as a real process on a tiny synthetic pack."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List

from nucleotron.data_prep.prep import PrepOptions, run_prep
from nucleotron.data_prep.synthetic import make_genome, write_fasta

import warm_python

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "experiments" / "tiny-cpu.yaml")

# Short runs: 8 steps, validation and a checkpoint every 4, a loss line every step.
FAST = ["train.max_steps=8", "checkpoint.every=4", "train.eval_every=4", "train.eval_steps=1", "train.log_every=1",
        "checkpoint.keep=3"]


def make_pack(root: Path, seq_len: int = 128, soft_mask: bool = False) -> Path:
    """A two-group pack (human-like and chimp-like synthetic genomes) with a valid split on chr20; with soft_mask,
    the same documents with the soft-mask bit on lower-case bases."""
    root.mkdir(parents=True, exist_ok=True)
    write_fasta(str(root / "human.fa"), make_genome(11, {"chr1": 30_000, "chr2": 20_000, "chr20": 12_000}).items())
    write_fasta(str(root / "chimp.fa"), make_genome(12, {"chr1": 25_000, "chr2": 15_000, "chr20": 12_000}).items())
    (root / "sources.tsv").write_text("path\tgroup\tassembly\nhuman.fa\thuman\thg\nchimp.fa\tnonhuman\tpt\n")
    pack = root / "pack"
    run_prep(PrepOptions(sources=str(root / "sources.tsv"), seq_len=seq_len, out=str(pack), min_len=64,
                         valid_chroms=["chr20"], workers=1, soft_mask=soft_mask, progress=False))
    return pack


def training_env() -> dict:
    """The test process's environment for a CPU training run, the same on every machine so losses are bit-exact
    against tests/assets/golden_losses.json: no TRITON_INTERPRET (conftest sets it for the in-process kernel tests;
    a CPU run takes Gengram's PyTorch path, as a user's does), no CUDA device (CPU mode even on a GPU machine), and
    one thread per process (floating-point sums do not depend on the core count)."""
    # ...and none of the rendezvous variables an in-process test's init_distributed left behind (its port may still
    # be bound by this process)
    leftovers = {"TRITON_INTERPRET", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                 "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in leftovers}
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    return env


def train_command(pack: Path, run_dir: Path, *overrides: str) -> List[str]:
    return [sys.executable, "-m", "nucleotron.launch.cli", "train", "--config", TINY, f"data.packs={pack}",
            f"run.dir={run_dir}", *FAST, *overrides]


def run_train(pack: Path, run_dir: Path, *overrides: str, expect: int = 0) -> subprocess.CompletedProcess:
    result = warm_python.run(train_command(pack, run_dir, *overrides), capture_output=True, text=True, timeout=600,
                             env=training_env())
    assert result.returncode == expect, (
        f"exit {result.returncode}, expected {expect}\n--- stdout\n{result.stdout[-3000:]}\n"
        f"--- stderr\n{result.stderr[-5000:]}")
    return result


def metrics(run_dir: Path) -> List[dict]:
    with open(run_dir / "metrics.jsonl") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def losses(run_dir: Path) -> List[tuple]:
    """(kind, step, loss) of every record: what must be identical between a straight and a resumed run."""
    return [(r["kind"], r["step"], r["loss"]) for r in metrics(run_dir)]


def checkpoints(run_dir: Path) -> List[str]:
    root = run_dir / "checkpoints"
    return sorted(d for d in os.listdir(root) if d.startswith("step-")) if root.is_dir() else []
