"""`nucleotron data stats DIR`: what is really in a pack's .bin files, checked against its manifest."""
from __future__ import annotations

import os
from typing import Dict

import numpy as np

from . import tokens as tk
from .errors import DataPrepError
from .manifest import load_manifest
from .writer import read_document_lengths

CHUNK = 64 << 20
SHARE_TOLERANCE = 1e-9      # blend shares are sums of a few doubles: equal to the declared ones up to rounding


def token_histogram(bin_path: str) -> np.ndarray:
    data = np.memmap(bin_path, dtype=np.uint8, mode="r") if os.path.getsize(bin_path) else np.zeros(0, np.uint8)
    counts = np.zeros(256, dtype=np.int64)
    for start in range(0, len(data), CHUNK):
        counts += np.bincount(data[start:start + CHUNK], minlength=256)
    return counts


def pack_stats(directory: str) -> dict:
    manifest = load_manifest(directory)
    datasets: Dict[str, dict] = {}
    for name, entry in manifest.raw["datasets"].items():
        prefix = os.path.join(manifest.directory, entry["prefix"])
        counts = token_histogram(prefix + ".bin")
        soft_masked = 0
        if manifest.soft_mask_bit is not None:        # fold soft-masked ids onto their base ids
            ids = np.arange(256)
            soft_masked = int(counts[ids & manifest.soft_mask_bit > 0].sum())
            counts = np.bincount(ids & ~manifest.soft_mask_bit, weights=counts, minlength=256).astype(np.int64)
        lengths = read_document_lengths(prefix)
        docs = np.load(prefix + ".docs.npy")
        acgt = int(counts[[tk.A, tk.C, tk.G, tk.T]].sum())
        bases = acgt + int(counts[tk.N])
        found = {"documents": int(len(lengths)), "tokens": int(counts.sum()), "bases": bases}
        mismatch = {k: (entry[k], v) for k, v in found.items() if entry[k] != v}
        if int(counts[tk.EOD]) != len(lengths) or mismatch:
            raise DataPrepError(f"{prefix}.bin disagrees with the manifest {mismatch or ''} / EOD count "
                                f"{int(counts[tk.EOD])} vs {len(lengths)} documents; rebuild the pack")
        datasets[name] = {
            "group": entry["group"], "split": entry["split"], **found,
            "n_fraction": int(counts[tk.N]) / bases if bases else 0.0,
            "gc_content": int(counts[tk.C] + counts[tk.G]) / acgt if acgt else 0.0,
            "full_length_fragments": int(np.count_nonzero(docs["length"] == manifest.seq_len)),
            "short_fragments": int(np.count_nonzero(docs["length"] < manifest.seq_len)),
            "reverse_complement_fragments": int(docs["reverse"].sum()),
        }
        if manifest.soft_mask_bit is not None:
            datasets[name]["soft_masked_fraction"] = soft_masked / bases if bases else 0.0
    mix = {split: _checked_mix(manifest, split, blend, datasets) for split, blend in manifest.blend.items()}
    return {"pack": manifest.directory, "seq_len": manifest.seq_len, "strand": manifest.strand,
            "datasets": datasets, "mix": mix}


def _checked_mix(manifest, split: str, blend, datasets: Dict[str, dict]) -> dict:
    """One split's mix: on-disk tokens per group recounted from the .bin files, and the blend's token share per group
    (its weights normalised) verified against the group weights the pack declares (human 0.5, nonhuman 0.5 unless
    prep was given --group-weights)."""
    where = f"{os.path.join(manifest.directory, 'manifest.json')} blend {split!r}"
    declared = manifest.group_weights
    total_weight = sum(blend.weights)
    share: Dict[str, float] = {}
    for group, weight in zip(blend.groups, blend.weights):
        share[group] = share.get(group, 0.0) + weight / total_weight
    if set(share) != set(declared):
        raise DataPrepError(f"{where} mixes groups {sorted(share)} but the pack declares {sorted(declared)}; "
                            f"rebuild the pack")
    for group, expected in declared.items():
        if abs(share[group] - expected) > SHARE_TOLERANCE:
            raise DataPrepError(f"{where}: group {group!r} gets a token share of {share[group]:.9f} under the blend "
                                f"but its declared weight is {expected:.9f}; rebuild the pack")
    counted = {g: sum(d["tokens"] for d in datasets.values() if d["group"] == g and d["split"] == split)
               for g in share}
    if counted != blend.on_disk_tokens:
        raise DataPrepError(f"{where}: on_disk_tokens {blend.on_disk_tokens} but the .bin files hold {counted}; "
                            f"rebuild the pack")
    on_disk = sum(counted.values())
    entry = {"on_disk_tokens": blend.on_disk_tokens, "on_disk_share": {g: t / on_disk for g, t in counted.items()},
             "blend_weights": dict(zip(blend.prefixes, blend.weights)), "blend_share": share,
             "declared_share": declared, "verified": True}
    if set(share) == {"human", "nonhuman"}:        # the names earlier versions reported
        entry["on_disk_human_share"] = entry["on_disk_share"]["human"]
        entry["blend_human_share"] = blend.expected_token_share["human"]
    return entry


def format_stats(result: dict) -> str:
    soft = any("soft_masked_fraction" in d for d in result["datasets"].values())
    lines = [f"pack {result['pack']}  seq_len {result['seq_len']}  strand {result['strand']['policy']} "
             f"(rc p={result['strand']['rc_probability']}, seed {result['strand']['seed']})", "",
             f"{'dataset':<18}{'documents':>11}{'tokens':>15}{'N frac':>9}{'GC':>8}{'full':>8}{'short':>7}{'rc':>7}"
             + (f"{'masked':>8}" if soft else "")]
    for name, d in result["datasets"].items():
        lines.append(f"{name:<18}{d['documents']:>11,}{d['tokens']:>15,}{d['n_fraction']:>9.4f}"
                     f"{d['gc_content']:>8.4f}{d['full_length_fragments']:>8,}{d['short_fragments']:>7,}"
                     f"{d['reverse_complement_fragments']:>7,}"
                     + (f"{d['soft_masked_fraction']:>8.4f}" if soft else ""))
    lines.append("")
    for split, m in result["mix"].items():
        on_disk = ", ".join(f"{g} {v:.4f}" for g, v in m["on_disk_share"].items())
        blended = ", ".join(f"{g} {v:.4f}" for g, v in m["blend_share"].items())
        lines.append(f"mix {split:<6} token shares on disk: {on_disk}; under the blend: {blended} "
                     f"(verified against the declared group weights)")
    return "\n".join(lines)
