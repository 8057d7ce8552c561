"""Benchmark `data prep` against a bare pyfaidx read of the same synthetic genome, measured in the same run.

    python benchmarks/data_prep.py --size 200      # Mb of synthetic genome (soft-masked runs, N gaps)

Throughput is bases per second per core, compared at equal parallelism, because cores of one machine are not
independent (shared memory bandwidth, and on a VM host threads that share physical cores):
- 1 core : `data prep` with 1 worker vs one process reading every record with pyfaidx;
- N cores: `data prep` with N workers (default: all cores), per worker, vs N pyfaidx reads running at the same time,
  per process.
Ratio >= 1.0 is the target: tokenising, cutting, reverse-complementing and writing cost nothing over reading.
Prep's time includes its own index pass (sha256 + record offsets) on the fresh file; pyfaidx's .fai is built
beforehand and timed apart. Each configuration runs --repeats times, alternating baseline and prep; the median and
range are printed. Also printed: CPU seconds (less sensitive than wall time to other jobs on the machine) and peak
resident memory of the prep main process and of its largest worker, as a multiple of the largest contig.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

from nucleotron.configs.cores import usable_cores
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
    """CPU seconds of this process and its finished children (pool workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _pyfaidx_index(path: str, queue) -> None:
    import pyfaidx
    start = time.perf_counter()
    pyfaidx.Fasta(path)                    # builds the .fai beside the file
    queue.put({"index_s": time.perf_counter() - start})


def _pyfaidx_read(path: str, queue) -> None:
    import pyfaidx
    fasta = pyfaidx.Fasta(path, sequence_always_upper=True)
    start, cpu = time.perf_counter(), _cpu_s()
    bases = sum(len(fasta[name][:].seq) for name in fasta.keys())
    queue.put({"bases": bases, "start": start, "end": time.perf_counter(), "cpu_s": _cpu_s() - cpu})


def _prep(sources: str, out: str, seq_len: int, workers: int, queue) -> None:
    from nucleotron.data_prep.prep import PrepOptions, run_prep
    start, cpu = time.perf_counter(), _cpu_s()
    manifest = run_prep(PrepOptions(sources=sources, seq_len=seq_len, out=out, workers=workers,
                                    rc_probability=0.56, progress=False,
                                    allow_duplicate_sources=True))   # both groups read one genome on purpose
    queue.put({"wall_s": time.perf_counter() - start, "cpu_s": _cpu_s() - cpu,
               "tokens": sum(d["tokens"] for d in manifest["datasets"].values()),
               "main_peak_mib": _peak_mib(resource.RUSAGE_SELF),
               "worker_peak_mib": _peak_mib(resource.RUSAGE_CHILDREN)})


def _in_children(target, count: int, *args) -> list:
    """Run `count` copies of target(*args, queue) at once, each in a fresh forked process; their results."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, queue)) for _ in range(count)]
    for proc in procs:
        proc.start()
    results = []
    while len(results) < count:   # a child that died without a result must not hang the benchmark
        try:
            results.append(queue.get(timeout=1))
        except Exception:
            if all(not proc.is_alive() for proc in procs) and queue.empty():
                raise SystemExit(f"a benchmark process failed (exit codes {[p.exitcode for p in procs]}); "
                                 f"see its traceback above")
    for proc in procs:
        proc.join()
    return results


def _baseline(fasta: str, processes: int) -> dict:
    """`processes` pyfaidx reads of the whole genome at once: bases per second per process (all bases read over
    the time from the first start to the last end, divided by the processes), like prep's per-worker figure."""
    runs = _in_children(_pyfaidx_read, processes, fasta)
    wall = max(r["end"] for r in runs) - min(r["start"] for r in runs)
    return {"rate": sum(r["bases"] for r in runs) / wall / processes, "wall_s": wall,
            "cpu_s": sum(r["cpu_s"] for r in runs), "bases": sum(r["bases"] for r in runs)}


def _fmt_range(values: list, fmt: str = "{:.2f}") -> str:
    return (fmt.format(statistics.median(values)) + " (" + fmt.format(min(values)) + "-" + fmt.format(max(values))
            + ")") if len(values) > 1 else fmt.format(values[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=float, default=200.0, help="genome size in Mb (default 200)")
    parser.add_argument("--contig", type=float, default=25.0, help="contig size in Mb (default 25)")
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--workers", type=int, default=usable_cores(), help="N (default: all usable cores)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each configuration (default 3)")
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temporary one, removed after)")
    args = parser.parse_args()

    scratch = args.dir or tempfile.mkdtemp(prefix="nucleotron-bench-")
    os.makedirs(scratch, exist_ok=True)
    rows = {}
    try:
        fasta = os.path.join(scratch, "genome.fa")
        start = time.perf_counter()
        bases, largest = write_genome(fasta, args.size, args.contig, seed=1)
        print(f"genome: {bases:,} bases, largest contig {largest:,}, {os.path.getsize(fasta) / 1e6:.0f} MB FASTA, "
              f"written in {time.perf_counter() - start:.1f} s")
        print(f"python {platform.python_version()}, {os.cpu_count()} cores, seq_len {args.seq_len}, "
              f"repeats {args.repeats}", flush=True)
        sources = os.path.join(scratch, "sources.tsv")    # the same file as both groups so the 1:1 blend exists
        os.symlink(fasta, os.path.join(scratch, "genome2.fa"))
        with open(sources, "w") as handle:
            handle.write("path\tgroup\tassembly\ngenome.fa\thuman\tsynthetic_h\ngenome2.fa\tnonhuman\tsynthetic_n\n")
        index_s = _in_children(_pyfaidx_index, 1, fasta)[0]["index_s"]
        for cores in sorted({1, args.workers}):
            for repeat in range(args.repeats):
                base = _baseline(fasta, cores)
                out = os.path.join(scratch, f"pack-{cores}-{repeat}")
                prep = _in_children(_prep, 1, sources, out, args.seq_len, cores)[0]
                shutil.rmtree(out)
                prep["rate"] = 2 * bases / prep["wall_s"] / cores
                rows.setdefault(cores, []).append((base, prep))
    finally:
        if args.dir is None:
            shutil.rmtree(scratch, ignore_errors=True)

    print(f"pyfaidx .fai build: {index_s:.2f} s (not counted; prep's own index pass is counted)")
    print("prep: the genome listed twice (as a human and a non-human assembly, 2 x the bases), rc 0.56")
    for cores, runs in rows.items():
        bases_read = [b["rate"] / 1e6 for b, _ in runs]
        prep_rate = [p["rate"] / 1e6 for _, p in runs]
        ratios = [p["rate"] / b["rate"] for b, p in runs]
        cpu_ratios = [(b["cpu_s"] / b["bases"]) / (p["cpu_s"] / (2 * bases)) for b, p in runs]
        label = "1 core " if cores == 1 else f"{cores} cores"
        print(f"{label}: pyfaidx read {_fmt_range(bases_read, '{:.1f}')} Mb/s per process | data prep "
              f"{_fmt_range(prep_rate, '{:.1f}')} Mb/s per worker ({_fmt_range([p['wall_s'] for _, p in runs])} s)"
              f" | ratio {_fmt_range(ratios)} (target >= 1.0) | per CPU-second {_fmt_range(cpu_ratios)}")
    last = rows[max(rows)][-1][1]
    print(f"tokens written: {last['tokens']:,}; peak RSS: prep main {last['main_peak_mib']:.0f} MiB, largest "
          f"worker {last['worker_peak_mib']:.0f} MiB = {last['worker_peak_mib'] * 2**20 / largest:.1f} x largest "
          f"contig")
    return 0


if __name__ == "__main__":
    sys.exit(main())
