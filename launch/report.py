"""`nucleotron report RUN_DIR... [--json] [--plot FILE.png]`: final validation loss per run, next to the paper's.

Reads only what a run leaves in RUN_DIR: config.yaml (what was trained, which paper number applies) and
metrics.jsonl (the last "valid" line is the run's final validation; a run still training shows its latest one).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

from nucleotron.configs import ConfigError, load_config

from .paper_numbers import references_for


@dataclass
class RunResult:
    run: str
    run_dir: str
    step: Optional[int]  # step of the final validation
    last_step: Optional[int]  # last training step logged
    loss: Optional[float]
    bits_per_base: Optional[float]
    human_loss: Optional[float]
    nonhuman_loss: Optional[float]
    paper: Optional[float]  # None when no (or no single) paper number applies
    paper_study: str  # e.g. "cross-arch", "layer-sweep/cross-arch" when ambiguous, "" when none
    note: str = ""

    @property
    def delta(self) -> Optional[float]:
        return None if self.loss is None or self.paper is None else self.loss - self.paper


def read_metrics(path: Path) -> List[dict]:
    """Metric lines; a line cut short by a killed job (or not JSON) is skipped, not fatal."""
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def summarize(run_dir: Path) -> RunResult:
    notes = []
    name, refs = run_dir.name, []
    config = run_dir / "config.yaml"
    if config.is_file():
        try:
            cfg = load_config(config)
            name, refs = cfg.run.name, references_for(cfg.model, list(cfg.logging.wandb_tags))
        except ConfigError as err:
            notes.append(f"config.yaml unreadable: {str(err).splitlines()[0]}")
    else:
        notes.append("no config.yaml")
    metrics = run_dir / "metrics.jsonl"
    records = read_metrics(metrics) if metrics.is_file() else []
    if not metrics.is_file():
        notes.append("no metrics.jsonl")
    valid = [r for r in records if r.get("kind") == "valid"]
    train = [r for r in records if r.get("kind") == "train"]
    final = valid[-1] if valid else {}
    if records and not valid:
        notes.append("no validation yet")
    paper = refs[0].loss if len({ref.loss for ref in refs}) == 1 else None
    return RunResult(run=name, run_dir=str(run_dir), step=final.get("step"),
                     last_step=train[-1].get("step") if train else None, loss=final.get("loss"),
                     bits_per_base=final.get("bits_per_base"), human_loss=final.get("human/loss"),
                     nonhuman_loss=final.get("nonhuman/loss"), paper=paper,
                     paper_study="/".join(dict.fromkeys(ref.study for ref in refs)), note="; ".join(notes))


def _fmt(value: Optional[float], spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def table(results: List[RunResult]) -> str:
    header = ("run", "step", "valid loss", "bits/base", "human", "nonhuman", "paper", "diff", "study", "note")
    names = [r.run for r in results]
    label = {id(r): r.run if names.count(r.run) == 1 else r.run_dir for r in results}  # same name: show the dir
    rows = [header] + [(label[id(r)], "-" if r.step is None else str(r.step), _fmt(r.loss), _fmt(r.bits_per_base),
                        _fmt(r.human_loss), _fmt(r.nonhuman_loss), _fmt(r.paper), _fmt(r.delta, "+.4f"),
                        r.paper_study or "-", r.note) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(prog="nucleotron report",
                                description="Final validation loss of each run, next to the Gengram paper's number "
                                            "for the same setting (50B-token ablations).")
    p.add_argument("run_dirs", nargs="+", type=Path, help="run directories (RUN_DIR), e.g. runs/ablations-50b/*")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="also draw the comparison to a PNG (matplotlib)")
    args = p.parse_args(argv)
    missing = [str(d) for d in args.run_dirs if not d.is_dir()]
    if missing:
        print(f"nucleotron report: not a directory: {', '.join(missing)} (give RUN_DIRs, e.g. runs/ablations-50b/*)",
              file=sys.stderr)
        return 2
    results = [summarize(d) for d in args.run_dirs]
    if args.json:
        print(json.dumps([dict(asdict(r), delta=r.delta) for r in results], indent=1))
    else:
        print(table(results))
    if args.plot:
        from .plot import PlotError, plot_losses
        try:
            plot_losses(results, args.plot)
        except PlotError as err:
            print(f"nucleotron report: {err}", file=sys.stderr)
            return 2
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0
