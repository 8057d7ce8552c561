"""`nucleotron report RUN_DIR... [--json] [--plot FILE.png]`: final validation loss per run, next to the paper's.

Reads only what a run leaves in RUN_DIR: config.yaml (what was trained, which paper number applies) and
metrics.jsonl (the last "valid" line is the run's final validation; a run still training shows its latest one).
plot_curves draws the learning curves of groups of runs (the quickstart's arms over seeds) from the same files.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from nucleotron.configs import ConfigError, load_config

from .paper_numbers import references_for
from .plot import PlotError


@dataclass
class RunResult:
    run: str
    run_dir: str
    step: Optional[int]  # step of the final validation
    last_step: Optional[int]  # last training step logged
    loss: Optional[float]
    bits_per_base: Optional[float]
    group_losses: Dict[str, float]  # per data group (the pack's manifest names them: human, nonhuman, prokaryote...)
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
                     bits_per_base=final.get("bits_per_base"), group_losses=group_losses(final), paper=paper,
                     paper_study="/".join(dict.fromkeys(ref.study for ref in refs)), note="; ".join(notes))


def group_losses(record: dict) -> Dict[str, float]:
    """{group: loss} from a validation record's "<group>/loss" entries (whatever groups the run's pack had)."""
    return {key[:-len("/loss")]: value for key, value in record.items()
            if key.endswith("/loss") and key.count("/") == 1 and isinstance(value, (int, float))}


def _fmt(value: Optional[float], spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def table(results: List[RunResult]) -> str:
    groups = list(dict.fromkeys(g for r in results for g in r.group_losses))  # every run's groups, first seen first
    header = ("run", "step", "valid loss", "bits/base", *groups, "paper", "diff", "study", "note")
    names = [r.run for r in results]
    label = {id(r): r.run if names.count(r.run) == 1 else r.run_dir for r in results}  # same name: show the dir
    rows = [header] + [(label[id(r)], "-" if r.step is None else str(r.step), _fmt(r.loss), _fmt(r.bits_per_base),
                        *(_fmt(r.group_losses.get(g)) for g in groups), _fmt(r.paper), _fmt(r.delta, "+.4f"),
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


def _curve(records: List[dict], kind: str, key) -> Tuple[List[int], List[float]]:
    """(steps, values) of the records of `kind` for which key(record) gives a number."""
    points = [(r["step"], key(r)) for r in records if r.get("kind") == kind and isinstance(r.get("step"), int)]
    points = [(s, v) for s, v in points if isinstance(v, (int, float)) and v == v]
    return [s for s, _ in points], [v for _, v in points]


def _mean_over_layers(prefix: str):
    """key(record): the mean of the record's values named prefix + 'layer<L>' (MoE statistics are per layer)."""
    def key(record: dict):
        values = [v for k, v in record.items() if k.startswith(prefix + "layer") and isinstance(v, (int, float))]
        return sum(values) / len(values) if values else None
    return key


def _mean_curve(curves: List[Tuple[List[int], List[float]]]) -> Tuple[List[int], List[float]]:
    """The mean over runs at the steps every run logged."""
    common = sorted(set.intersection(*(set(steps) for steps, _ in curves))) if curves else []
    by_step = [dict(zip(steps, values)) for steps, values in curves]
    return common, [sum(c[s] for c in by_step) / len(by_step) for s in common]


def _loss_zoom(points: List[Tuple[float, float]], always: Tuple[float, ...] = (2.0,)
               ) -> Optional[Tuple[float, float]]:
    """(bottom, top) holding every point after the first tenth of the steps and the `always` lines (the 2-bit
    line, rulers), with a margin."""
    if not points:
        return None
    last = max(step for step, _ in points)
    later = [value for step, value in points if step >= 0.1 * last] or [value for _, value in points]
    low, high = min(later + list(always)), max(later + list(always))
    margin = 0.05 * (high - low) or 0.01
    return low - margin, high + margin


def plot_curves(groups: Dict[str, List[Path]], path: Path, moe: bool = False,
                rulers: Optional[Dict[str, float]] = None) -> None:
    """Learning curves of groups of runs (e.g. one arm over several seeds) in one PNG: training loss (thin line per
    run, bold mean; in bits per token, EOD targets included, so a little above bits per base) and validation bits
    per base (markers, the number `report` and the quickstart print), the loss axis zoomed on the steps after the
    first tenth (the initial drop from ln(vocab) would flatten the rest); rulers (label -> bits per base, e.g. the
    quickstart's count-based references on the same validation samples) as dotted lines; with moe, a second panel
    with the routers' load-balancing loss (aux loss / its coefficient, mean over layers; 1 = balanced)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError("the learning-curve plot needs matplotlib: pip install matplotlib") from None
    to_bits = 1 / math.log(2)
    panels = [("train", "loss", lambda r: r.get("loss"), "bits/base (train lines: per token, EOD included)",
               to_bits)]
    if moe:
        panels.append(("train", "moe", _mean_over_layers("moe/aux_loss/"), "load-balancing loss (1 = balanced)", 1.0))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    colors = plt.get_cmap("tab10")
    for (kind, name, key, label, scale), ax in zip(panels, axes[0]):
        shown = []  # (step, value) of every loss point drawn, for the zoom
        for index, (group, run_dirs) in enumerate(groups.items()):
            color = colors(index % 10)
            records = [read_metrics(d / "metrics.jsonl") if (d / "metrics.jsonl").is_file() else []
                       for d in run_dirs]
            curves = [c for c in (_curve(r, kind, key) for r in records) if c[0]]
            for steps, values in curves:
                ax.plot(steps, [v * scale for v in values], color=color, lw=0.6, alpha=0.35)
                shown += [(s, v * scale) for s, v in zip(steps, values)]
            steps, values = _mean_curve(curves)
            if steps:
                ax.plot(steps, [v * scale for v in values], color=color, lw=2,
                        label=f"{group} train (mean of {len(curves)})" if name == "loss" else f"{group}")
            if name == "loss":
                valid = [c for c in (_curve(r, "valid", lambda r: r.get("bits_per_base")) for r in records) if c[0]]
                for i, (v_steps, v_values) in enumerate(valid):
                    ax.plot(v_steps, v_values, "o", color=color, ms=4, mfc="none",
                            label=f"{group} validation" if i == 0 else None)
                    shown += list(zip(v_steps, v_values))
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        if name == "loss":
            for label_, bits in (rulers or {}).items():
                ax.axhline(bits, color="0.35", lw=0.8, ls=":")
                ax.text(ax.get_xlim()[1], bits, f"{label_} {bits:.3f} ", ha="right", va="bottom", fontsize=7,
                        color="0.3")
            zoom = _loss_zoom(shown, always=(2.0, *(rulers or {}).values()))
            if zoom:
                ax.set_ylim(*zoom)
            ax.axhline(2.0, color="0.6", lw=0.8, ls="--")
            ax.text(ax.get_xlim()[0], 2.0, " 2 bits: independent uniform bases", va="bottom", fontsize=7,
                    color="0.4")
        else:
            ax.axhline(1.0, color="0.6", lw=0.8, ls="--")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as err:
        raise PlotError(f"cannot write {path}: {err.strerror}") from None
    finally:
        plt.close(fig)
