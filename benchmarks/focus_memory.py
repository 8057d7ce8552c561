"""KV-cache bytes, peak memory and per-base latency of streaming FOCUS vs the uncompressed model, against length.

    python benchmarks/focus_memory.py                                   # CPU: tiny model, 1k..16k bases
    python benchmarks/focus_memory.py --config configs/models/dense-0.3b.yaml --lengths 8192,32768,131072 \\
        --out benchmarks/results/focus_memory-gpu.md                    # a GPU machine (bf16 weights)

Both run the same streaming loop on randomly initialised weights (memory and speed do not depend on the values):
FOCUS keeps summary K/V and evicts base K/V at every window end; the uncompressed model keeps every K/V (no
summaries, no eviction). Bases arrive in window-sized chunks, then `--decode` more one at a time. Each (model,
length) point runs in a fresh process, so its peak memory is its own: peak RSS above the process's RSS after the
model is built (CPU), or torch.cuda.max_memory_allocated (GPU). Latency: wall seconds per base while streaming
(prefill) and per decoded base at that length, and the process's CPU seconds for the same (less sensitive to other
jobs on a shared machine).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
from datetime import datetime, timezone

CPU_OVERRIDES = ["model.attention_backend=sdpa", "train.precision=fp32"]
VOCAB = {"PAD": 0, "C": 5, "G": 6, "T": 7, "A": 8, "N": 9, "EOD": 12}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def point(config: str, overrides, length: int, model_kind: str, decode: int) -> dict:
    """One measurement in this process (called in a child)."""
    import torch

    from nucleotron.configs import load_config
    from nucleotron.infer.checkpoint import build_model, single_process_megatron
    from nucleotron.infer.focus_eval import memory_point
    from nucleotron.model.focus import FocusModel

    cfg = load_config(config, list(overrides))
    with single_process_megatron(cfg):
        torch.manual_seed(0)
        base = build_model(cfg, VOCAB)
        if torch.cuda.is_available() and cfg.train.precision == "bf16":
            base = base.to(torch.bfloat16)
        model = FocusModel(base, cfg.focus)
        rss_before = _rss_bytes()
        result = memory_point(model, length, model_kind == "focus", cfg.focus.window, [VOCAB[b] for b in "ACGT"],
                              decode=decode)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    result["peak_rss_above_model_bytes"] = max(peak_rss - rss_before, 0)
    result["k"], result["window"] = cfg.focus.k, cfg.focus.window
    return result


def run_child(args, length: int, model_kind: str) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--point", model_kind, str(length), "--config", args.config,
               "--decode", str(args.decode), *args.overrides]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{model_kind} at {length} bases failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mib(value) -> str:
    return "n/a" if value is None else f"{value / 2 ** 20:.2f}"


def table(rows, device: str) -> str:
    memory = "peak CUDA MiB" if device == "cuda" else "peak RSS above model MiB"
    lines = [f"| length | model | KV entries/layer (max) | KV MiB (max) | {memory} | ms/base streaming | "
             f"ms/base decoding | CPU ms/base streaming | CPU ms/base decoding |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        peak = r["peak_memory_bytes"] if device == "cuda" else r["peak_rss_above_model_bytes"]
        lines.append(f"| {r['length']:,} | {r['model']} | {r['max_kv_entries_per_layer']:,} | "
                     f"{mib(r['max_kv_bytes'])} | {mib(peak)} | {1e3 * r['seconds_per_base']:.3f} | "
                     f"{1e3 * r['seconds_per_decoded_base']:.2f} | {1e3 * r['cpu_seconds_per_base']:.3f} | "
                     f"{1e3 * r['cpu_seconds_per_decoded_base']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/models/tiny.yaml")
    parser.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    parser.add_argument("--decode", type=int, default=16, help="bases decoded one at a time after each prefix")
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    parser.add_argument("--point", nargs=2, metavar=("MODEL", "LENGTH"), help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides (e.g. focus.k=50)")
    args = parser.parse_intermixed_args(argv)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        args.overrides = CPU_OVERRIDES + list(args.overrides)
    if args.point:
        print(json.dumps(point(args.config, args.overrides, int(args.point[1]), args.point[0], args.decode)))
        return 0
    rows = []
    for length in [int(x) for x in args.lengths.split(",")]:
        for kind in ("focus", "uncompressed"):
            rows.append(run_child(args, length, kind))
            print(json.dumps(rows[-1]), file=sys.stderr)
    k, window = rows[0]["k"], rows[0]["window"]
    header = (f"FOCUS streaming vs uncompressed KV cache, {args.config} {' '.join(args.overrides)} (k={k}, W={window}),"
              f" {device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
              f"{torch.__version__}), {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    text = f"{header}\n\n{table(rows, device)}\n"
    print(text)
    if args.out:
        from nucleotron.configs.files import write_atomic

        write_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
