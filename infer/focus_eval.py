"""`nucleotron focus eval`: fidelity of streaming FOCUS to the uncompressed model, and its memory against length.

    nucleotron focus eval runs/tiny --adapter focus.safetensors --sequences held_out.fa --out focus-eval/

For every held-out sequence, both models see the same bases; at every base position the next-token distributions
are compared with the paper's five measures (L1, L2, Hellinger, Jensen-Shannon, KL(base || focus); 1e-12 clipping),
reported as medians and IQRs overall and per position. Then both are streamed over growing lengths: KV entries
and bytes kept per layer, and peak memory (CUDA; null on CPU, where benchmarks/focus_memory.py measures peak RSS
in a fresh process per point). Written: OUT/focus_eval.json and OUT/focus_eval.png (when matplotlib is installed).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict
from typing import Dict, List, Optional, Sequence

import torch

from nucleotron.configs.files import write_json_atomic

DEFAULT_LENGTHS = "1024,2048,4096,8192"


@torch.no_grad()
def fidelity_report(model, sequences: Sequence[torch.Tensor]) -> dict:
    """Medians/IQRs of the five measures over all base positions, and per position (shortest sequence's length)."""
    from nucleotron.infer.focus_stream import FocusStreamer
    from nucleotron.model.focus.metrics import MEASURES, fidelity, median_iqr

    streamer = FocusStreamer(model)
    per_sequence: Dict[str, List[torch.Tensor]] = {m: [] for m in MEASURES}
    for ids in sequences:
        ids = ids.reshape(1, -1)
        base = torch.softmax(model.base_logits(ids).float(), dim=-1)
        streamer.reset()
        focus = torch.softmax(streamer.feed(ids).float(), dim=-1)
        for name, values in fidelity(base, focus).items():
            per_sequence[name].append(values[0].cpu())
    shortest = min(v.numel() for v in per_sequence["l1"])
    report = {"sequences": len(sequences), "positions": sum(v.numel() for v in per_sequence["l1"]),
              "overall": {}, "per_position": {}}
    for name, rows in per_sequence.items():
        report["overall"][name] = median_iqr(torch.cat(rows))
        stacked = torch.stack([r[:shortest] for r in rows]).double()
        q1, med, q3 = torch.quantile(stacked, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64), dim=0)
        report["per_position"][name] = {"median": med.tolist(), "iqr": (q3 - q1).tolist()}
    return report


@torch.no_grad()
def memory_point(model, length: int, compress: bool, chunk: int, vocab_ids: Sequence[int], decode: int = 16,
                 seed: int = 0) -> dict:
    """Stream `length` random bases in chunks, then decode `decode` more one at a time: KV entries and bytes held
    (at the end and at most), peak memory (CUDA), seconds per base while streaming and per decoded base."""
    from nucleotron.infer.focus_stream import FocusStreamer

    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(vocab_ids), (1, length + decode), generator=generator)
    ids = torch.tensor(vocab_ids)[picks].to(device)
    streamer = FocusStreamer(model, compress=compress)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    for s in range(0, length, chunk):
        streamer.feed(ids[:, s:min(s + chunk, length)])
    if cuda:
        torch.cuda.synchronize()
    middle, cpu_middle = time.perf_counter(), time.process_time()
    for s in range(length, length + decode):
        streamer.feed(ids[:, s:s + 1])
    if cuda:
        torch.cuda.synchronize()
    end, cpu_end = time.perf_counter(), time.process_time()
    return {
        "length": length, "model": "focus" if compress else "uncompressed",
        "kv_entries_per_layer": streamer.cache.entries(), "max_kv_entries_per_layer": streamer.max_entries,
        "kv_bytes": streamer.cache.kv_bytes(), "max_kv_bytes": streamer.max_kv_bytes,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
        "seconds_per_base": (middle - start) / length, "seconds_per_decoded_base": (end - middle) / max(decode, 1),
        "cpu_seconds_per_base": (cpu_middle - cpu_start) / length,  # all threads: less sensitive to other jobs
        "cpu_seconds_per_decoded_base": (cpu_end - cpu_middle) / max(decode, 1),
    }


def segments(records, length: int, limit: int, eod: int) -> List:
    """Non-overlapping pieces of `length` bases (EOD first) from the records in order, at most `limit` of them;
    records shorter than `length` are taken whole."""
    import numpy as np

    out = []
    for ids in records:
        bases = ids[1:]
        for start in range(0, max(len(bases) - length, 0) + 1, length):
            out.append(np.concatenate([[eod], bases[start:start + length]]))
            if len(out) == limit:
                return out
    return out


def memory_profile(model, lengths: Sequence[int], chunk: int, vocab_ids: Sequence[int]) -> List[dict]:
    return [memory_point(model, n, compress, chunk, vocab_ids) for n in lengths for compress in (True, False)]


def plot(report: dict, path: str) -> Optional[str]:
    """Per-position median L1 and KL, and kept KV entries against length; None when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name in ("l1", "kl"):
        left.plot(report["fidelity"]["per_position"][name]["median"], label=f"median {name}")
    left.set_xlabel("base position")
    left.set_yscale("log")
    left.set_title("FOCUS vs uncompressed, per position")
    left.legend()
    for kind in ("focus", "uncompressed"):
        rows = [r for r in report["memory"] if r["model"] == kind]
        right.plot([r["length"] for r in rows], [r["max_kv_entries_per_layer"] for r in rows], marker="o", label=kind)
    right.set_xlabel("sequence length (bases)")
    right.set_ylabel("max KV entries per layer")
    right.set_xscale("log")
    right.set_yscale("log")
    right.legend()
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="nucleotron focus eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="the frozen base model: RUN_DIR or a checkpoint directory")
    parser.add_argument("--adapter", help="trained adapter: a `focus train` RUN_DIR or checkpoint, or its .safetensors "
                        "file; default: the adapter at initialisation")
    parser.add_argument("--sequences", required=True, help="held-out FASTA (.fa/.fasta/.fna, .gz too)")
    parser.add_argument("--focus-config", help="YAML with a focus: section (configs/focus/*.yaml), applied over "
                        "the adapter's settings")
    parser.add_argument("--record", action="append", help="only these FASTA records (repeatable; default all)")
    parser.add_argument("--segment", type=int, default=1024, help="bases per compared segment (default 1024, as "
                        "in the paper)")
    parser.add_argument("--max-segments", type=int, default=200, help="segments compared at most (default 200)")
    parser.add_argument("--lengths", default=DEFAULT_LENGTHS, help=f"memory sweep lengths (default {DEFAULT_LENGTHS})")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("overrides", nargs="*", help="focus.KEY=VALUE (e.g. focus.window=2048)")
    args = parser.parse_intermixed_args(argv)

    from .focus_io import encode_records, open_focus

    try:
        lengths = [int(x) for x in args.lengths.split(",")]
        with open_focus(args.checkpoint, args.adapter, args.overrides, args.focus_config) as (model, vocab, cfg):
            names, records = encode_records(args.sequences, vocab)
            if args.record:
                missing = sorted(set(args.record) - set(names))
                if missing:
                    raise ValueError(f"{args.sequences}: no record named {missing}; it has {names[:10]}")
                records = [r for name, r in zip(names, records) if name in args.record]
            records = segments(records, args.segment, args.max_segments, vocab["EOD"])
            device = next(model.parameters()).device
            report = {"checkpoint": args.checkpoint, "adapter": args.adapter, "focus": asdict(cfg.focus),
                      "fidelity": fidelity_report(model, [torch.from_numpy(r).to(device) for r in records]),
                      "memory": memory_profile(model, lengths, cfg.focus.window, [vocab[b] for b in "ACGT"])}
    except ValueError as err:  # CheckpointError, ConfigError, SequenceError and model-wrapping errors
        print(f"nucleotron focus eval: {err}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    write_json_atomic(os.path.join(args.out, "focus_eval.json"), report)
    picture = plot(report, os.path.join(args.out, "focus_eval.png"))
    overall = report["fidelity"]["overall"]
    print("fidelity (median / IQR): " + ", ".join(f"{m} {v['median']:.3g} / {v['iqr']:.3g}"
                                                  for m, v in overall.items()))
    print(f"wrote {args.out}/focus_eval.json" + (f" and {picture}" if picture else " (no plot: pip install matplotlib)"))
    return 0
