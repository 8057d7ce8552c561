"""`nucleotron analyze gengram RUN_DIR --fasta FILE [--region chr:start-end] [--annotation GFF] [--out DIR]`.

The paper's interpretability outputs (section 5.5) for a trained Gengram model, read on one CPU process:
- tracks.tsv / tracks.png: per position of the sequence, each Gengram layer's gate alpha and the norm of what it
  writes into the residual stream |y| (y = Gengram output - its input), with the annotation's features drawn;
- kmers.tsv: the k-mers whose table rows have the largest norm, per layer and order;
- rc_symmetry.tsv: whether a k-mer's table row resembles its reverse complement's (row-norm correlation and mean
  cosine, next to the mean cosine of random row pairs);
- summary.json: per layer the mean alpha and |y|, and with an annotation, per feature type the mean inside the
  features, outside them, the contrast (inside - outside) and the contrast between positions holding the same base.

The gate is recomputed from the module's own query and key norms (forward hooks), and checked against the gate mean
the module records, so a change of the gate formula in model/gengram.py fails here loudly instead of drifting.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from nucleotron.model.gengram import GATE_FLOOR, Gengram

MAX_REGION = 200_000  # bases analysed in one call: the TSV has one line per base
SHADED_FEATURE_MAX = 200  # features shorter than this (sites, motifs, tracts) are shaded behind the tracks


class AnalyzeError(ValueError):
    """Bad input; the message names the file or setting and what to do."""


@dataclass
class Feature:
    chrom: str
    start: int  # 1-based, inclusive (GFF)
    end: int
    kind: str
    strand: str
    name: str


# ----------------------------------------------------------------------------------------------- inputs

def parse_region(text: str) -> Tuple[str, int, int]:
    """'chr1:1001-2000' (1-based, inclusive, commas allowed) -> (chrom, start, end)."""
    chrom, sep, span = text.rpartition(":")
    try:
        start, end = (int(x.replace(",", "")) for x in span.split("-"))
    except ValueError:
        start = end = 0
    if not sep or not chrom or start < 1 or end < start:
        raise AnalyzeError(f"--region {text!r}: expected CHROM:START-END, 1-based inclusive, e.g. chr1:1001-2000")
    return chrom, start, end


def read_sequence(fasta: Path, region: Optional[str]) -> Tuple[str, int, bytes]:
    """(chrom, 1-based start, bases) of the region, or of the first record when no region is given."""
    if not fasta.is_file():
        raise AnalyzeError(f"--fasta {fasta}: no such file")
    want = parse_region(region) if region else None
    records: Dict[str, List[bytes]] = {}
    current = None
    with open(fasta, "rb") as handle:
        for line in handle:
            if line.startswith(b">"):
                current = line[1:].split()[0].decode() if line[1:].split() else ""
                if want is None and records:
                    break
                records[current] = []
            elif current is not None and (want is None or current == want[0]):
                records[current].append(line.strip())
    if not records:
        raise AnalyzeError(f"--fasta {fasta}: no FASTA record (expected lines starting with '>')")
    chrom = next(iter(records)) if want is None else want[0]
    if chrom not in records:
        raise AnalyzeError(f"--region {region}: {fasta} has no record named {chrom!r} "
                           f"(it has {', '.join(list(records)[:5])})")
    seq = b"".join(records[chrom])
    start, end = (1, len(seq)) if want is None else want[1:]
    if end > len(seq):
        raise AnalyzeError(f"--region {region}: {chrom} in {fasta} has only {len(seq)} bases")
    if end - start + 1 > MAX_REGION:
        raise AnalyzeError(f"{chrom}:{start}-{end} is {end - start + 1} bases; analyse at most {MAX_REGION} at a "
                           f"time (pass --region CHROM:START-END)")
    return chrom, start, seq[start - 1:end]


def read_gff(path: Path, chrom: str, start: int, end: int) -> List[Feature]:
    """GFF3/GTF features on `chrom` overlapping start..end (1-based, inclusive)."""
    if not path.is_file():
        raise AnalyzeError(f"--annotation {path}: no such file")
    features = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip() or line.startswith("#"):
                continue
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 8:
                raise AnalyzeError(f"--annotation {path} line {number}: expected 9 tab-separated GFF columns, "
                                   f"got {len(cols)}")
            try:
                f_start, f_end = int(cols[3]), int(cols[4])
            except ValueError:
                raise AnalyzeError(f"--annotation {path} line {number}: start/end {cols[3]!r}/{cols[4]!r} are not "
                                   f"integers") from None
            if cols[0] != chrom or f_end < start or f_start > end:
                continue
            attrs = cols[8] if len(cols) > 8 else ""
            name = next((kv.split("=", 1)[1] for kv in attrs.split(";") if kv.startswith(("Name=", "ID="))), "")
            features.append(Feature(cols[0], f_start, f_end, cols[2], cols[6], name))
    return features


# ----------------------------------------------------------------------------------------------- the model

def _read_checkpoint(run_dir: Path):
    from .checkpoint import CheckpointError, read_checkpoint

    try:
        ckpt = read_checkpoint(str(run_dir))
    except CheckpointError as err:
        raise AnalyzeError(str(err)) from None
    if not ckpt.cfg.model.gengram.layers:
        raise AnalyzeError(f"{run_dir}: this model has no Gengram layer (model.gengram.layers is empty); "
                           f"analyse a run trained with Gengram")
    return ckpt


def gengram_modules(model) -> Dict[int, object]:
    """1-based layer number -> its Gengram module."""
    return {m.layer_number: m.gengram for m in model.modules() if isinstance(getattr(m, "gengram", None), Gengram)}


class TrackRecorder:
    """Forward hooks on one Gengram module: per position alpha and |y| of the last forward ([b, s] each)."""

    def __init__(self, gengram):
        self.seen = {}
        gengram.norm_q.register_forward_hook(lambda m, a, out: self.seen.__setitem__("q", out.detach()))
        gengram.norm_k.register_forward_hook(lambda m, a, out: self.seen.__setitem__("k", out.detach()))
        gengram.register_forward_hook(self._after)
        self.alpha = self.write_norm = None

    def _after(self, module, args, output):
        hidden = args[0]  # [s, b, H]
        score = (self.seen["q"] * self.seen["k"]).sum(-1) / math.sqrt(hidden.shape[-1])
        alpha = torch.sigmoid(torch.sign(score) * torch.sqrt(score.abs().clamp(min=GATE_FLOOR)))
        recorded = float(module.last_gate_mean)
        if abs(float(alpha.mean()) - recorded) > 1e-4 * max(1.0, abs(recorded)):
            raise RuntimeError(f"the gate recomputed by infer/analyze.py ({float(alpha.mean()):.6f}) differs from the "
                               f"one the Gengram module used ({recorded:.6f}): update TrackRecorder to match "
                               f"model/gengram.py")
        self.alpha = alpha.transpose(0, 1).float()
        self.write_norm = (output - hidden).detach().norm(dim=-1).transpose(0, 1).float()


def tracks(model, ids: np.ndarray, seq_len: int) -> Dict[int, Tuple[np.ndarray, np.ndarray]]:
    """layer -> (alpha [n], |y| [n]) along the whole sequence: windows of seq_len overlapping by half, each
    position read from the first window that holds it (so after the first window, with >= seq_len/2 bases of
    left context)."""
    recorders = {layer: TrackRecorder(g) for layer, g in gengram_modules(model).items()}
    n = len(ids)
    step = max(1, seq_len // 2)
    starts = list(range(0, max(n - seq_len, 0) + 1, step))
    if starts[-1] + seq_len < n:
        starts.append(n - seq_len)
    out = {layer: (np.zeros(n, np.float32), np.zeros(n, np.float32)) for layer in recorders}
    with torch.no_grad():
        for i, start in enumerate(starts):
            window = torch.as_tensor(ids[start:start + seq_len], dtype=torch.long)[None]
            positions = torch.arange(window.shape[1])[None]
            model(window, positions, None)
            keep_from = 0 if i == 0 else starts[i - 1] + seq_len - start
            for layer, rec in recorders.items():
                alpha, norm = out[layer]
                alpha[start + keep_from:start + window.shape[1]] = rec.alpha[0, keep_from:].numpy()
                norm[start + keep_from:start + window.shape[1]] = rec.write_norm[0, keep_from:].numpy()
    return out


def kmer_of(index: int, order: int) -> str:
    """Table row -> k-mer, read 5'->3' (the kernel's id puts the newest base in the lowest base-5 digit)."""
    letters = []
    for _ in range(order):
        index, code = divmod(index, 5)
        letters.append("ACGTN"[code])
    return "".join(reversed(letters))


def _rc_index(order: int) -> Tuple[np.ndarray, np.ndarray]:
    """(rows of N-free k-mers, the row of each one's reverse complement)."""
    rows, partners = [], []
    complement = {"A": "T", "C": "G", "G": "C", "T": "A"}
    index_of = {}
    for row in range(5 ** order):
        kmer = kmer_of(row, order)
        if "N" not in kmer:
            index_of[kmer] = row
    for kmer, row in index_of.items():
        rows.append(row)
        partners.append(index_of["".join(complement[b] for b in reversed(kmer))])
    return np.array(rows), np.array(partners)


def table_report(model, top: int, seed: int = 0) -> Tuple[List[tuple], List[tuple]]:
    """(top k-mer rows by norm, reverse-complement symmetry rows) for every Gengram layer and order."""
    rng = np.random.default_rng(seed)
    top_rows, rc_rows = [], []
    for layer, gengram in gengram_modules(model).items():
        for order, table in zip(gengram.orders, gengram.tables):
            weights = table.detach().float().numpy()
            norms = np.linalg.norm(weights, axis=1)
            rows, partners = _rc_index(order)
            for rank, row in enumerate(rows[np.argsort(-norms[rows], kind="stable")[:top]], 1):
                top_rows.append((layer, order, rank, kmer_of(int(row), order), float(norms[row])))
            unit = weights / np.maximum(norms[:, None], 1e-12)
            distinct = rows != partners
            cos_rc = float((unit[rows[distinct]] * unit[partners[distinct]]).sum(1).mean()) if distinct.any() else \
                float("nan")
            shuffled = rng.permutation(rows)
            cos_random = float((unit[rows] * unit[shuffled]).sum(1).mean())
            corr = float(np.corrcoef(norms[rows], norms[partners])[0, 1]) if len(rows) > 2 else float("nan")
            rc_rows.append((layer, order, len(rows), corr, cos_rc, cos_random))
    return top_rows, rc_rows


# ----------------------------------------------------------------------------------------------- outputs

def feature_contrast(values: np.ndarray, first: int, features: List[Feature], bases: bytes
                     ) -> Dict[str, Dict[str, float]]:
    """Per feature type: the mean of `values` at positions inside its features and at positions outside every
    feature (the background), inside - outside ("contrast"), and the same difference taken base by base (A inside
    vs A outside, ...) and averaged with the inside positions' base counts ("contrast_same_base"): a gate that
    depends on the current base alone shows a raw contrast wherever a feature's composition differs from the
    background's, but no same-base contrast."""
    covered = np.zeros(len(values), bool)
    inside: Dict[str, np.ndarray] = {}
    for f in features:
        lo, hi = max(f.start - first, 0), min(f.end - first + 1, len(values))
        covered[lo:hi] = True
        inside.setdefault(f.kind, np.zeros(len(values), bool))[lo:hi] = True
    upper = np.frombuffer(bases.upper(), dtype=np.uint8)
    background = ~covered
    out = {}
    for kind, mask in inside.items():
        mean_in = float(values[mask].mean())
        mean_out = float(values[background].mean()) if background.any() else float("nan")
        diffs, weights = [], []
        for base in b"ACGT":
            here, there = mask & (upper == base), background & (upper == base)
            if here.any() and there.any():
                diffs.append(values[here].mean() - values[there].mean())
                weights.append(here.sum())
        same_base = float(np.average(diffs, weights=weights)) if diffs else float("nan")
        out[kind] = {"inside": mean_in, "outside": mean_out, "contrast": mean_in - mean_out,
                     "contrast_same_base": same_base, "positions_inside": int(mask.sum()),
                     "positions_outside": int(background.sum())}
    return out


def write_tsv(path: Path, header: List[str], rows) -> None:
    from nucleotron.configs.files import write_atomic

    lines = ["\t".join(header)] + ["\t".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row)
                                    for row in rows]
    write_atomic(str(path), "\n".join(lines) + "\n")


def plot_tracks(path: Path, chrom: str, first: int, bases: bytes, layers: Dict[int, Tuple[np.ndarray, np.ndarray]],
                features: List[Feature]) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise AnalyzeError("the track plot needs matplotlib: pip install matplotlib") from None
    x = np.arange(first, first + len(bases))
    last = first + len(bases) - 1
    short = [f for f in features if f.end - f.start < SHADED_FEATURE_MAX]  # sites, motifs, tracts
    panels = 2 * len(layers) + (1 if features else 0)
    fig, axes = plt.subplots(panels, 1, figsize=(12, 1.1 + 1.4 * panels), sharex=True, squeeze=False)
    axes = axes[:, 0]
    row = 0
    if features:
        ax = axes[0]
        kinds = sorted({f.kind for f in features})
        colors = plt.get_cmap("tab10")
        for f in features:
            level = kinds.index(f.kind)
            start, end = max(f.start, first), min(f.end, last)  # drawn within the region only
            ax.broken_barh([(start, end - start + 1)], (level - 0.4, 0.8), color=colors(level % 10))
        ax.set_yticks(range(len(kinds)), kinds, fontsize=7)
        ax.set_ylim(-0.6, len(kinds) - 0.4)
        ax.set_title(f"{chrom}:{first}-{first + len(bases) - 1}", fontsize=9)
        row = 1
    for layer, (alpha, norm) in sorted(layers.items()):
        axes[row].plot(x, alpha, lw=0.6, color="tab:blue")
        axes[row].set_ylabel(f"L{layer} gate α", fontsize=8)
        axes[row + 1].plot(x, norm, lw=0.6, color="tab:red")
        axes[row + 1].set_ylabel(f"L{layer} |y|", fontsize=8)
        for ax in axes[row:row + 2]:
            for f in short:
                ax.axvspan(max(f.start, first), min(f.end, last), color="0.85", lw=0, zorder=0)
        row += 2
    axes[-1].set_xlim(first, last)
    axes[-1].set_xlabel(f"{chrom} position (1-based)")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def analyze_gengram(run_dir: Path, fasta: Path, region: Optional[str], annotation: Optional[Path], out: Path,
                    top: int) -> dict:
    chrom, first, bases = read_sequence(fasta, region)
    features = read_gff(annotation, chrom, first, first + len(bases) - 1) if annotation else []
    from nucleotron.data_prep.tokens import BYTE_TO_TOKEN, ILLEGAL, VOCAB

    raw = np.frombuffer(bases, dtype=np.uint8)
    bad = np.flatnonzero(BYTE_TO_TOKEN[raw] == ILLEGAL)
    if len(bad):
        raise AnalyzeError(f"--fasta {fasta}: {chrom} has the non-DNA character {chr(raw[bad[0]])!r} at position "
                           f"{first + int(bad[0])}")
    from .checkpoint import build_model, load_weights, single_process_megatron

    ckpt = _read_checkpoint(run_dir)
    if any(ckpt.vocab.get(base) != VOCAB[base] for base in "ACGTN"):
        raise AnalyzeError(f"{run_dir}: the model's token ids {ckpt.vocab} are not data prep's {VOCAB}; this tool "
                           f"tokenizes with data prep's ids")
    with single_process_megatron(ckpt.cfg):
        model = build_model(ckpt.cfg, ckpt.vocab).eval()
        load_weights(model, ckpt.directory)
        layers = tracks(model, BYTE_TO_TOKEN[raw].astype(np.int64), ckpt.cfg.data.seq_len)
        top_rows, rc_rows = table_report(model, top)
    out.mkdir(parents=True, exist_ok=True)
    header = ["chrom", "pos", "base"] + [f"{name}_L{layer}" for layer in sorted(layers) for name in ("alpha", "ynorm")]
    rows = ((chrom, first + i, chr(raw[i]), *[float(layers[layer][k][i]) for layer in sorted(layers) for k in (0, 1)])
            for i in range(len(raw)))
    write_tsv(out / "tracks.tsv", header, rows)
    write_tsv(out / "kmers.tsv", ["layer", "order", "rank", "kmer", "row_norm"], top_rows)
    write_tsv(out / "rc_symmetry.tsv", ["layer", "order", "kmers", "rc_norm_corr", "rc_cosine_mean",
                                        "random_cosine_mean"], rc_rows)
    plot_tracks(out / "tracks.png", chrom, first, bases, layers, features)
    summary = {"run_dir": str(run_dir), "region": f"{chrom}:{first}-{first + len(bases) - 1}", "layers": {}}
    for layer, (alpha, norm) in sorted(layers.items()):
        entry = {"alpha_mean": float(alpha.mean()), "ynorm_mean": float(norm.mean())}
        if features:
            entry["alpha_by_feature"] = feature_contrast(alpha, first, features, bases)
            entry["ynorm_by_feature"] = feature_contrast(norm, first, features, bases)
        summary["layers"][f"layer{layer}"] = entry
    from nucleotron.configs.files import write_json_atomic

    write_json_atomic(str(out / "summary.json"), summary)
    return summary


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(prog="nucleotron analyze", description="Interpretability read-outs of a trained model.")
    sub = p.add_subparsers(dest="what", required=True)
    g = sub.add_parser("gengram", help="gate alpha and residual write |y| along a sequence, k-mer table rows")
    g.add_argument("run_dir", type=Path, help="RUN_DIR of a Gengram run (its newest checkpoint is read)")
    g.add_argument("--fasta", type=Path, required=True, help="FASTA holding the sequence to read")
    g.add_argument("--region", help="CHROM:START-END, 1-based inclusive (default: the first record, whole)")
    g.add_argument("--annotation", type=Path, help="GFF3/GTF whose features are drawn and contrasted")
    g.add_argument("--out", type=Path, help="output folder (default RUN_DIR/analysis)")
    g.add_argument("--top", type=int, default=10, help="k-mers listed per layer and order (default 10)")
    args = p.parse_args(argv)
    try:
        summary = analyze_gengram(args.run_dir, args.fasta, args.region, args.annotation,
                                  args.out or args.run_dir / "analysis", args.top)
    except AnalyzeError as err:
        print(f"nucleotron analyze: {err}", file=sys.stderr)
        return 2
    out = args.out or args.run_dir / "analysis"
    for name, entry in summary["layers"].items():
        line = f"{name}: mean gate {entry['alpha_mean']:.4f}, mean |y| {entry['ynorm_mean']:.4f}"
        for kind, c in entry.get("alpha_by_feature", {}).items():
            line += (f"; gate at {kind} {c['inside']:.4f} vs background {c['outside']:.4f} ({c['contrast']:+.4f}, "
                     f"same base {c['contrast_same_base']:+.4f})")
        print(line)
    print(f"wrote {out}/tracks.tsv, tracks.png, kmers.tsv, rc_symmetry.tsv, summary.json")
    return 0

