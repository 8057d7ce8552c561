"""The report's picture: our final validation loss per run beside the paper's, as horizontal bars in a PNG.

matplotlib is optional (the GPU image has it; `pip install matplotlib` elsewhere): it is imported only here, only
when `nucleotron report --plot` is asked for.
"""
from __future__ import annotations

from pathlib import Path
from typing import List


class PlotError(RuntimeError):
    """The plot cannot be drawn; the message says what to install or change."""


def plot_losses(results: List, path: Path) -> None:
    """results: report.RunResult items; runs without a validation loss are left out."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError("--plot needs matplotlib: pip install matplotlib (or leave out --plot)") from None
    shown = [r for r in results if r.loss is not None]
    if not shown:
        raise PlotError("no run has a validation loss yet; nothing to plot")
    height = 0.4
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.45 * len(shown)))
    rows = range(len(shown))
    ax.barh([y - height / 2 for y in rows], [r.loss for r in shown], height, label="this run")
    papers = [(y, r.paper) for y, r in zip(rows, shown) if r.paper is not None]
    if papers:
        ax.barh([y + height / 2 for y, _ in papers], [loss for _, loss in papers], height, label="paper")
    ax.set_yticks(list(rows), [r.run for r in shown], fontsize=8)
    ax.invert_yaxis()
    losses = [r.loss for r in shown] + [loss for _, loss in papers]
    span = max(losses) - min(losses)
    ax.set_xlim(min(losses) - max(span, 0.01) * 0.5, max(losses) + max(span, 0.01) * 0.2)
    ax.set_xlabel("final validation loss (nats per base)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as err:
        raise PlotError(f"cannot write {path}: {err.strerror}") from None
    finally:
        plt.close(fig)
