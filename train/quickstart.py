"""`nucleotron quickstart`: the whole workflow on a CPU in minutes, with nothing to download.

1. writes a synthetic two-species genome built from what real genomes contain (data_prep/genome_sim.py: genes with
   promoters, TATA boxes, codon-structured exons and splice sites, some in tandem gene arrays, interspersed repeat
   families at the human genome's shares (Alu subfamilies by age), a satellite block per chromosome, segmental
   duplications, microsatellites and poly-A/T tracts, N gaps; a chimp-like copy ~1.2% diverged);
2. runs `nucleotron data prep` on it (train split, chr5 held out for validation);
3. runs `nucleotron train` for each seed and each arm of configs/experiments/quickstart.yaml: a baseline without
   Gengram and the same model with Gengram (with --moe: the MoE preset, quickstart-moe.yaml), W&B in offline mode;
   --jobs of them at a time (default: one per usable core), each with its share of the cores as OMP_NUM_THREADS
   and its output in <run dir>/train.log;
4. prints the held-out loss and bits/base of both arms as mean and spread over seeds, the per-seed difference, and
   count-based Markov references on the same validation samples (order 0: base composition alone; order 12:
   memory of the training chromosomes' repeats), and draws the learning curves of both arms with those references
   into one PNG (with --moe also the routers' load-balancing loss).

Each step is the command a user would type, printed before it runs; re-running the quickstart reuses the pack and
resumes (or just reports) finished runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from nucleotron.configs import CONFIG_ROOT
from nucleotron.configs.cores import usable_cores
from nucleotron.configs.files import write_atomic

ARMS = {"baseline": ["model.gengram.layers=[]"], "gengram": []}
CHROMOSOMES = ("chr1", "chr2", "chr3", "chr4", "chr5")
GENOME_SEED = 2026


def write_genomes(out: Path, megabases: float, seed: int = GENOME_SEED) -> Path:
    """human.fa and chimp.fa (5 chromosomes each, the second ~1.2% diverged from the first), human.gff3 (what
    was placed where: genes, exons, TATA boxes, splice sites, repeats, microsatellites, gaps) and sources.tsv."""
    from nucleotron.data_prep.genome_sim import gff3, simulate_species
    from nucleotron.data_prep.synthetic import write_fasta

    per_chrom = int(megabases * 1e6 / 2 / len(CHROMOSOMES))
    human, chimp, annotation = simulate_species(seed, {name: per_chrom for name in CHROMOSOMES})
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(str(out / "human.gff3"), gff3(annotation))
    for name, genome in (("human", human), ("chimp", chimp)):
        write_fasta(str(out / f"{name}.fa.tmp"), genome.items(), width=80)
        (out / f"{name}.fa.tmp").replace(out / f"{name}.fa")
    sources = out / "sources.tsv"
    write_atomic(str(sources), "path\tgroup\tassembly\tspecies\n"
                               "human.fa\thuman\tsynthetic-human\tHomo sapiens (synthetic)\n"
                               "chimp.fa\tnonhuman\tsynthetic-chimp\tPan troglodytes (synthetic)\n")
    return sources


def _run(command: List[str]) -> None:
    shown = " ".join(["nucleotron"] + command[3:])
    print(f"\n$ {shown}", flush=True)
    result = subprocess.run(command)
    if result.returncode != 0:
        raise SystemExit(f"nucleotron quickstart: `{shown}` failed with exit status {result.returncode}")


def _nucleotron(*args: str) -> List[str]:
    return [sys.executable, "-m", "nucleotron.launch.cli", *args]


@dataclass(frozen=True)
class TrainingRun:
    """One `nucleotron train` of the quickstart: an arm at a seed, its command and where its output goes."""

    name: str
    run_dir: Path
    command: List[str]

    @property
    def log(self) -> Path:
        return self.run_dir / "train.log"


def plan_jobs(requested: Optional[int], runs: int, cores: int) -> "tuple[int, int]":
    """(concurrent trainings, threads each): by default one training per core, never more than there are runs;
    the cores are shared out evenly, at least one thread each."""
    jobs = max(1, min(requested or cores, runs))
    return jobs, max(1, cores // jobs)


def child_environment(threads: int) -> Dict[str, str]:
    """The trainings' environment: the thread count set explicitly, whatever the caller's shell exported."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads)}


def shown_command(run: TrainingRun, threads: int) -> str:
    """The line a user would type for this training, its output appended to the run's log."""
    args = ["nucleotron"] + run.command[3:]
    return f"OMP_NUM_THREADS={threads} {shlex.join(args)} >> {shlex.quote(str(run.log))} 2>&1"


class _Stopped(Exception):
    """SIGTERM reached the quickstart: its trainings are stopped before it exits."""


def _raise_stopped(signum, frame):
    raise _Stopped()


def _stop(children: Dict[subprocess.Popen, TrainingRun], grace_s: float = 30.0) -> None:
    """SIGTERM every running training (each saves a checkpoint and exits), then kill what is left after grace_s."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def train_all(runs: List[TrainingRun], jobs: int, threads: int, poll_s: float = 0.5) -> None:
    """Train `runs`, `jobs` at a time. Commands are printed first, in run order; a note per finished run follows,
    also in run order (a run that ends early waits for the ones before it), so the output does not depend on
    timing. A failed training stops the others and names its log; so do Ctrl-C and SIGTERM."""
    print(f"\ntraining {len(runs)} run(s), {jobs} at a time with {threads} thread(s) each; each run's output "
          f"goes to its train.log:", flush=True)
    for run in runs:
        print(f"$ {shown_command(run, threads)}", flush=True)
    env = child_environment(threads)
    pending, running = list(runs), {}
    started: Dict[str, float] = {}
    took: Dict[str, float] = {}  # seconds, of the runs that finished
    noted = 0
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        while pending or running:
            while pending and len(running) < jobs:
                run = pending.pop(0)
                run.run_dir.mkdir(parents=True, exist_ok=True)
                with open(run.log, "a") as log:  # a re-run resumes the run, so its log goes on too
                    running[subprocess.Popen(run.command, stdout=log, stderr=subprocess.STDOUT, env=env)] = run
                started[run.name] = time.monotonic()
            time.sleep(poll_s)
            for child in [c for c in running if c.poll() is not None]:
                run = running.pop(child)
                took[run.name] = time.monotonic() - started[run.name]
                if child.returncode != 0:
                    raise SystemExit(f"nucleotron quickstart: training {run.name} failed with exit status "
                                     f"{child.returncode}; its output: {run.log}")
            while noted < len(runs) and runs[noted].name in took:
                run = runs[noted]
                noted += 1
                print(f"[{noted}/{len(runs)}] {run.name} finished in {took[run.name]:.0f} s ({run.log})",
                      flush=True)
    except (KeyboardInterrupt, _Stopped):
        raise SystemExit("nucleotron quickstart: interrupted; the trainings were stopped (re-run to resume them)")
    finally:  # on every way out, no training is left running
        _stop(running)
        signal.signal(signal.SIGTERM, previous)


def _final_validation(run_dir: Path) -> Dict[str, float]:
    with open(run_dir / "metrics.jsonl") as handle:
        valid = [json.loads(line) for line in handle if '"kind": "valid"' in line]
    if not valid:
        raise SystemExit(f"nucleotron quickstart: {run_dir}/metrics.jsonl holds no validation result")
    return valid[-1]


def _spread(values: List[float]) -> str:
    """'mean ± sample std [min, max]' (no std for a single seed)."""
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {statistics.stdev(values):.4f} [{min(values):.4f}, {max(values):.4f}]"


def summary_table(results: Dict[str, List[dict]]) -> str:
    lines = [f"{'arm':<10} {'seeds':>5}  {'loss (nats/base)':<36} {'bits/base':<36}"]
    for arm, finals in results.items():
        lines.append(f"{arm:<10} {len(finals):>5}  {_spread([r['loss'] for r in finals]):<36} "
                     f"{_spread([r['bits_per_base'] for r in finals]):<36}")
    for group in ("human", "nonhuman"):
        key = f"{group}/loss"
        if all(key in r for finals in results.values() for r in finals):
            lines.append(f"  {group} loss: " + ", ".join(
                f"{arm} {_spread([r[key] for r in finals])}" for arm, finals in results.items()))
    deltas = [g["loss"] - b["loss"] for b, g in zip(results["baseline"], results["gengram"])]
    lines.append(f"Gengram - baseline, same seed: {_spread(deltas)} nats/base "
                 f"(per seed: {', '.join(f'{d:+.4f}' for d in deltas)})")
    return "\n".join(lines)


def count_references(pack: Path, config: Path) -> Dict[int, float]:
    """{order: bits per base} of Markov references on the validation samples the trainings score (the config's
    eval_steps x global_batch_size per group): the rulers the quickstart's numbers are read against."""
    import tempfile

    from nucleotron.configs import load_config
    from nucleotron.train.count_reference import pack_references

    train = load_config(config).train
    with tempfile.TemporaryDirectory() as cache:
        return pack_references(str(pack), train.eval_steps * train.global_batch_size, cache)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nucleotron quickstart",
        description="CPU demo with no downloads: synthetic genome -> packs -> baseline and Gengram models, "
                    "over one or more seeds.")
    parser.add_argument("--out", default="quickstart", help="working folder (default ./quickstart)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="training seeds per arm (default 1; 3 or more to see the spread)")
    parser.add_argument("--moe", action="store_true",
                        help="the MoE preset (configs/experiments/quickstart-moe.yaml): compare the routers' "
                             "load-balancing loss with and without Gengram")
    parser.add_argument("--steps", type=int, help="training steps per model (default: the preset's train.max_steps)")
    parser.add_argument("--genome-mb", type=float, default=2.0, help="synthetic genome size in Mb (default 2)")
    parser.add_argument("--seq-len", type=int, default=256, help="pack sequence length (default 256)")
    parser.add_argument("--jobs", type=int,
                        help="trainings run at the same time (default: one per usable core, at most one per run); "
                             "each gets cores // jobs threads (the Gengram arm's sums depend on the thread count, "
                             "so its losses match across --jobs only to ~1e-7 at first, not bit for bit)")
    parser.add_argument("--wandb", choices=("offline", "off"), default="offline",
                        help="W&B logging of the runs (default offline: no account or network needed)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.jobs is not None and args.jobs < 1:
        parser.error("--jobs must be at least 1")

    from nucleotron.configs import load_config
    from nucleotron.launch.plot import PlotError
    from nucleotron.launch.report import plot_curves
    from nucleotron.train.count_reference import describe

    preset = "quickstart-moe" if args.moe else "quickstart"
    config = CONFIG_ROOT / "experiments" / f"{preset}.yaml"
    steps = args.steps or load_config(config).train.max_steps
    out = Path(args.out).resolve()
    pack = out / "packs" / f"seq{args.seq_len}"
    print(f"nucleotron quickstart: everything goes to {out}", flush=True)
    if not (pack / "manifest.json").is_file():
        sources = write_genomes(out / "fasta", args.genome_mb)
        print(f"wrote a {args.genome_mb:g} Mb synthetic two-species genome to {sources.parent}", flush=True)
        _run(_nucleotron("data", "prep", "--sources", str(sources), "--seq-len", str(args.seq_len), "--out",
                         str(pack), "--valid-chroms", "chr5", "--no-progress"))
    evaluate_every = -(-steps // 3)  # a third of the run, rounded up: the third validation is the final one
    common = [f"data.packs={pack}", f"train.max_steps={steps}", f"train.eval_every={evaluate_every}",
              f"checkpoint.every={steps}", f"train.log_every={max(1, steps // 30)}"]
    if args.wandb == "offline":
        common += ["logging.wandb=true", "logging.wandb_mode=offline", "logging.wandb_project=nucleotron-quickstart"]
    runs: Dict[str, List[Path]] = {arm: [] for arm in ARMS}
    trainings = []
    for seed in range(1, args.seeds + 1):
        for arm, extra in ARMS.items():
            run_dir = out / "runs" / preset / f"{arm}-seed{seed}"
            trainings.append(TrainingRun(f"{arm}-seed{seed}", run_dir, _nucleotron(
                "train", "--config", str(config), f"run.dir={run_dir}", f"run.name={preset}-{arm}-seed{seed}",
                f"run.seed={seed}", *common, *extra)))
            runs[arm].append(run_dir)
    train_all(trainings, *plan_jobs(args.jobs, len(trainings), usable_cores()))

    results = {arm: [_final_validation(d) for d in dirs] for arm, dirs in runs.items()}
    references = count_references(pack, config)
    plot = out / f"{preset}-curves.png"
    try:
        plot_curves(runs, plot, moe=args.moe, rulers={f"order-{k} Markov": v for k, v in references.items()})
    except PlotError as err:
        raise SystemExit(f"nucleotron quickstart: {err}") from None
    print(f"\nvalidation after {steps} steps (chr5 of both synthetic species, held out), "
          f"mean ± std [min, max] over {args.seeds} seed(s):")
    print(summary_table(results))
    print(f"count-based references on the same samples, fitted to the training chromosomes (bits/base): "
          f"{describe(references)}")
    print(f"\nlearning curves{' and MoE load balance' if args.moe else ''}: {plot}")
    print(f"runs: {out / 'runs' / preset}/{{baseline,gengram}}-seed* (config.yaml, metrics.jsonl, checkpoints/)")
    if args.wandb == "offline":
        print(f"W&B offline logs: {out / 'runs' / preset}/*/wandb (upload later with `wandb sync <dir>`)")
    fasta = out / "fasta"
    print(f"inside the Gengram model: nucleotron analyze gengram {runs['gengram'][0]} --fasta {fasta / 'human.fa'} "
          f"--annotation {fasta / 'human.gff3'} --region chr5:1-50000")
    print("next: real data with `nucleotron data fetch` / `data prep`, a paper config from configs/models/, "
          "and `nucleotron launch slurm` (see README)")
    return 0
