"""Ratio benchmark of the fused k-mer window mean (Triton) against two baselines measured in the same run.

Baselines: (a) the plain-PyTorch reference (nucleotron.kernels.reference), (b) the public reference's algorithm
(bf16 prefix sums + shifted difference, one gather per order; nucleotron.kernels.prefix_sum_baseline).
Also reports the fused forward's output-write bandwidth as a fraction of a large device-to-device copy's
bandwidth: writing b*s*6d outputs is the floor of the forward pass (the tables live in L2).

    python benchmarks/gengram_kernel.py            # CUDA: 8 x 8,192 tokens, d = 1024, W = 21, bf16 tables
    python benchmarks/gengram_kernel.py --smoke    # CPU: tiny sizes in the Triton interpreter (checks it runs)
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; on CPU runs the Triton interpreter")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--window", type=int, default=21)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    if args.smoke:
        args.batch, args.seq, args.dim, args.iters = 1, 256, 32, 1
    return args


def timer(device):
    """Median seconds of fn() over `iters` runs after a warm-up (CUDA events on a GPU, wall clock on CPU)."""
    import torch

    def measure(fn, iters):
        fn()
        samples = []
        for _ in range(iters):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                samples.append(start.elapsed_time(end) / 1e3)
            else:
                start = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - start)
        return sorted(samples)[len(samples) // 2]

    return measure


def main():
    args = parse_args()
    import torch

    if not torch.cuda.is_available():
        if not args.smoke:
            sys.exit("gengram_kernel benchmark: needs a CUDA GPU (use --smoke to check it runs on CPU)")
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are imported
    from nucleotron.kernels.kmer_gather import kmer_window_mean_triton
    from nucleotron.kernels.prefix_sum_baseline import kmer_window_mean_prefix_sum
    from nucleotron.kernels.reference import kmer_window_mean_reference

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    measure = timer(device)
    torch.manual_seed(0)
    codes = torch.full((128,), -1, dtype=torch.long, device=device)
    codes[torch.tensor([8, 5, 6, 7, 9])] = torch.arange(5)  # A C G T N -> 0..4 (public Gengram ids)
    ids = torch.tensor([8, 5, 6, 7], device=device)[torch.randint(0, 4, (args.batch, args.seq), device=device)]
    tables = [torch.randn(5 ** n, args.dim, device=device, dtype=torch.bfloat16).requires_grad_() for n in range(1, 7)]
    grad_out = torch.randn(args.batch, args.seq, 6 * args.dim, device=device, dtype=torch.bfloat16)

    impls = {
        "fused triton": kmer_window_mean_triton,
        "pytorch reference": kmer_window_mean_reference,
        "public algorithm (bf16 prefix sums)": kmer_window_mean_prefix_sum,
    }
    forward, forward_backward = {}, {}
    for name, fn in impls.items():
        with torch.no_grad():
            forward[name] = measure(lambda: fn(ids, tables, codes, args.window), args.iters)
        forward_backward[name] = measure(
            lambda: torch.autograd.grad(fn(ids, tables, codes, args.window), tables, grad_out), args.iters)

    print(f"k-mer window mean: {args.batch} x {args.seq} tokens, d = {args.dim}, W = {args.window}, "
          f"orders 1..6, bf16 tables, device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")
    fused = "fused triton"
    for label, times in (("forward", forward), ("forward+backward", forward_backward)):
        print(f"{label}:")
        for name, seconds in times.items():
            ratio = "" if name == fused else f"   speed-up of fused: {seconds / times[fused]:.2f}x"
            print(f"  {name:38s} {seconds * 1e3:10.3f} ms{ratio}")

    copy_bytes = 1 << 30 if device.type == "cuda" else 1 << 24  # 1 GiB on a GPU: far beyond L2
    copy_src = torch.empty(copy_bytes, dtype=torch.uint8, device=device)
    copy_dst = torch.empty_like(copy_src)
    copy_seconds = measure(lambda: copy_dst.copy_(copy_src), max(args.iters, 3))
    copy_bandwidth = 2 * copy_src.numel() / copy_seconds  # bytes read + written
    out_bytes = args.batch * args.seq * 6 * args.dim * tables[0].element_size()
    write_bandwidth = out_bytes / forward[fused]
    print(f"device copy bandwidth (read + write): {copy_bandwidth / 1e9:.1f} GB/s")
    print(f"fused forward output writes: {write_bandwidth / 1e9:.1f} GB/s = "
          f"{write_bandwidth / copy_bandwidth:.1%} of copy bandwidth")
    if device.type != "cuda":
        print("(smoke run in the Triton interpreter on CPU: these numbers say nothing about GPU speed)")


if __name__ == "__main__":
    main()
