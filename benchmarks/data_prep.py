"""Benchmark `data prep` against a bare pyfaidx read of the same synthetic genome, measured in the same run.

    python benchmarks/data_prep.py --size 200      # Mb of synthetic genome (soft-masked runs, N gaps)

Reports prep throughput in bases/s per worker beside pyfaidx's single-process read throughput (ratio; target >= 1.0:
a worker cuts and writes bases at least as fast as pyfaidx alone reads them), the same per CPU-second (what a run
costs, whatever else shares the machine), and peak resident memory of the prep main process and of its largest
worker, as a multiple of the largest contig.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import tempfile
import time

import numpy as np

from nucleotron.data_prep.synthetic import random_contig, wrap


def write_genome(path: str, size_mb: float, contig_mb: float, seed: int) -> tuple:
    """Write contigs of contig_mb (the last one shorter) one at a time, so the generator never holds the genome."""
    rng = np.random.default_rng(seed)
    total, sizes = int(size_mb * 1e6), []
    with open(path, "wb") as handle:
        while sum(sizes) < total:
            length = min(int(contig_mb * 1e6), total - sum(sizes))
            seq = random_contig(rng, length, gaps=max(1, length // 5_000_000), gap_len=(100, 50_000), short_n=100)
            handle.write(f">chr{len(sizes) + 1} synthetic\n".encode())
            handle.write(wrap(seq, 60))
            sizes.append(length)
    return sum(sizes), max(sizes)


def _peak_mib(who) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (pool workers): unlike wall time, not inflated by
    other jobs on a shared machine."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _pyfaidx_read(path: str, queue) -> None:
    import pyfaidx
    start, cpu = time.perf_counter(), _cpu_s()
    fasta = pyfaidx.Fasta(path, sequence_always_upper=True)   # builds the .fai
    index_s, index_cpu_s = time.perf_counter() - start, _cpu_s() - cpu
    start, cpu = time.perf_counter(), _cpu_s()
    bases = sum(len(fasta[name][:].seq) for name in fasta.keys())
    queue.put({"bases": bases, "index_s": index_s, "read_s": time.perf_counter() - start, "index_cpu_s": index_cpu_s,
               "read_cpu_s": _cpu_s() - cpu, "peak_mib": _peak_mib(resource.RUSAGE_SELF)})


def _prep(sources: str, out: str, seq_len: int, workers: int, queue) -> None:
    from nucleotron.data_prep.prep import PrepOptions, run_prep
    start, cpu = time.perf_counter(), _cpu_s()
    manifest = run_prep(PrepOptions(sources=sources, seq_len=seq_len, out=out, workers=workers,
                                    rc_probability=0.56, progress=False))
    queue.put({"wall_s": time.perf_counter() - start, "cpu_s": _cpu_s() - cpu,
               "tokens": sum(d["tokens"] for d in manifest["datasets"].values()),
               "main_peak_mib": _peak_mib(resource.RUSAGE_SELF),
               "worker_peak_mib": _peak_mib(resource.RUSAGE_CHILDREN)})


def _in_child(target, *args) -> dict:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=float, default=200.0, help="genome size in Mb (default 200)")
    parser.add_argument("--contig", type=float, default=25.0, help="contig size in Mb (default 25)")
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temporary one, removed after)")
    args = parser.parse_args()

    scratch = args.dir or tempfile.mkdtemp(prefix="nucleotron-bench-")
    os.makedirs(scratch, exist_ok=True)
    try:
        fasta = os.path.join(scratch, "genome.fa")
        start = time.perf_counter()
        bases, largest = write_genome(fasta, args.size, args.contig, seed=1)
        print(f"genome: {bases:,} bases, largest contig {largest:,}, {os.path.getsize(fasta) / 1e6:.0f} MB FASTA, "
              f"written in {time.perf_counter() - start:.1f} s")
        half = os.path.join(scratch, "sources.tsv")   # the same file as both groups so the 1:1 blend exists
        os.symlink(fasta, os.path.join(scratch, "genome2.fa"))
        with open(half, "w") as handle:
            handle.write("path\tgroup\tassembly\ngenome.fa\thuman\tsynthetic_h\ngenome2.fa\tnonhuman\tsynthetic_n\n")
        baseline = _in_child(_pyfaidx_read, fasta)
        prep = _in_child(_prep, half, os.path.join(scratch, "pack"), args.seq_len, args.workers)
    finally:
        if args.dir is None:
            shutil.rmtree(scratch, ignore_errors=True)

    pyfaidx_rate = baseline["bases"] / baseline["read_s"]
    prep_bases = 2 * bases
    per_worker = prep_bases / prep["wall_s"] / args.workers
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, workers {args.workers}, "
          f"seq_len {args.seq_len}")
    print(f"pyfaidx baseline : index {baseline['index_s']:.2f} s, read {baseline['read_s']:.2f} s = "
          f"{pyfaidx_rate / 1e6:.1f} Mb/s (1 process), peak RSS {baseline['peak_mib']:.0f} MiB")
    print(f"data prep        : {prep_bases:,} bases (genome x 2 assemblies) in {prep['wall_s']:.2f} s = "
          f"{prep_bases / prep['wall_s'] / 1e6:.1f} Mb/s total, {per_worker / 1e6:.1f} Mb/s per worker, "
          f"{prep['tokens']:,} tokens written")
    with_index = baseline["bases"] / (baseline["index_s"] + baseline["read_s"])
    print(f"ratio            : prep per worker / pyfaidx read = {per_worker / pyfaidx_rate:.2f} (target >= 1.0); "
          f"vs pyfaidx index + read ({with_index / 1e6:.1f} Mb/s) = {per_worker / with_index:.2f}")
    per_cpu_s = prep_bases / prep["cpu_s"]
    read_cpu, index_read_cpu = baseline["read_cpu_s"], baseline["index_cpu_s"] + baseline["read_cpu_s"]
    print(f"CPU time         : prep {prep['cpu_s']:.2f} CPU-s = {per_cpu_s / 1e6:.1f} Mb per CPU-second; pyfaidx read "
          f"{read_cpu:.2f} CPU-s, index + read {index_read_cpu:.2f} CPU-s; ratio per CPU-second "
          f"{per_cpu_s * read_cpu / baseline['bases']:.2f} vs read, "
          f"{per_cpu_s * index_read_cpu / baseline['bases']:.2f} vs index + read (other jobs on the machine inflate "
          f"these less than wall time)")
    print(f"peak RSS         : prep main {prep['main_peak_mib']:.0f} MiB, largest worker "
          f"{prep['worker_peak_mib']:.0f} MiB = {prep['worker_peak_mib'] * 2**20 / largest:.1f} x largest contig")
    return 0


if __name__ == "__main__":
    sys.exit(main())
