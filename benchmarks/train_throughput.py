"""Training throughput of MoE-1.2B at 8k tokens on one GPU, with and without Gengram, measured in the same run.

Makes a synthetic two-group pack at --seq-len, then runs `nucleotron train` twice as subprocesses: the baseline
(the same config with model.gengram.layers=[] unless --baseline-config is given, e.g.
configs/models/no-gengram/moe-1.2b-gqa.yaml, the same model) and the Gengram model. Each run's
metrics.jsonl gives step time, tokens/s per device and MFU (model FLOPs: active parameters + causal attention, as
nucleotron.model.flops counts them); records whose logging window overlaps the first --warmup steps are dropped and
the median of the rest is reported. Targets (issue): MFU >= 35% with the SDPA/flash attention path, and Gengram
step time / baseline step time <= 1.03.

    python benchmarks/train_throughput.py --out     # one GPU: MoE-1.2B, 8,192 tokens, bf16; writes the report
    python benchmarks/train_throughput.py --smoke   # CPU: tiny models, checks the script end to end; no MFU

On a GPU node (the image in docker/, or an install with the `gpu` extra), from the repository root:
    CUDA_VISIBLE_DEVICES=0 python benchmarks/train_throughput.py --out
It writes benchmarks/results/train_throughput-<gpu>.md (e.g. -nvidia-h200). Each run ends with the trainer's
compulsory final checkpoint (~19 GB for MoE-1.2B: bf16 weights + fp32 Adam state), deleted once the run's metrics are read;
--workdir picks where they go (default: a temporary folder, removed at the end).
This project's CI had no GPU: GPU numbers are unmeasured unless a results file in benchmarks/results/ says otherwise.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MFU_TARGET = 0.35
RATIO_TARGET = 1.03


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU: tiny models, short sequences, a few steps")
    parser.add_argument("--config", default="configs/models/moe-1.2b.yaml", help="the Gengram model")
    parser.add_argument("--baseline-config", default=None,
                        help="the no-Gengram model (default: --config with model.gengram.layers=[])")
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=30, help="training steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="first steps left out of the numbers")
    parser.add_argument("--log-every", type=int, default=5, help="steps per metrics record (the timing window)")
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--attention-backend", default="auto", help="auto | flash | sdpa (model.attention_backend)")
    parser.add_argument("--workdir", default=None, help="pack and runs (default: a temporary folder, removed)")
    parser.add_argument("--out", action="store_true",
                        help="also write the report as markdown to benchmarks/results/train_throughput-<device>.md")
    parser.add_argument("overrides", nargs="*",
                        help="extra dotted overrides for both runs, e.g. model.recompute=selective")
    args = parser.parse_args()
    if args.smoke:
        args.config = "configs/experiments/tiny-cpu.yaml"
        args.seq_len, args.steps, args.warmup, args.log_every = 128, 8, 4, 2
        args.micro_batch, args.global_batch = 2, 4
    args.config = repo_path(args.config)
    args.baseline_config = args.baseline_config and repo_path(args.baseline_config)
    if args.warmup >= args.steps:
        parser.error("--warmup must be below --steps, or nothing is left to measure")
    return args


def repo_path(path: str) -> str:
    """A config path as given (from the current folder), else relative to the repository: runs from anywhere."""
    return str(Path(path).resolve() if Path(path).exists() else REPO / path)


# ---------------------------------------------------------------- inputs


def make_pack(root: Path, args) -> Path:
    """Human-like and chimp-like synthetic genomes big enough that the runs read each training token about once."""
    from nucleotron.data_prep.prep import PrepOptions, run_prep
    from nucleotron.data_prep.synthetic import make_genome, write_fasta

    train_tokens = args.steps * args.global_batch * args.seq_len
    per_group = max(50_000, int(0.6 * train_tokens))  # half the blend each, plus room for N gaps and short cuts
    valid = max(20_000, int(1.3 * args.global_batch * args.seq_len))  # one global batch (train.eval_steps=1)
    root.mkdir(parents=True, exist_ok=True)
    for name, seed in (("human", 11), ("chimp", 12)):
        write_fasta(str(root / f"{name}.fa"), make_genome(seed, {"chr1": per_group, "chr20": valid}).items())
    (root / "sources.tsv").write_text("path\tgroup\tassembly\nhuman.fa\thuman\thg\nchimp.fa\tnonhuman\tpt\n")
    pack = root / "pack"
    run_prep(PrepOptions(sources=str(root / "sources.tsv"), seq_len=args.seq_len, out=str(pack),
                         valid_chroms=["chr20"], workers=1, progress=False))
    return pack


def free_port() -> int:
    """The trainer's default MASTER_PORT (29500) may be taken by another job on a shared machine."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def machine_info(attention_backend: str) -> dict:
    """Asked in a child process so this one never holds a CUDA context while the runs train."""
    probe = ("import json, torch; from nucleotron.model.attention import resolve_backend; cuda = "
             "torch.cuda.is_available(); print(json.dumps({'device': torch.cuda.get_device_name() if cuda else "
             "'cpu', 'cuda': torch.version.cuda if cuda else None, 'backend': resolve_backend(%r)}))"
             % attention_backend)
    info = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                     check=True).stdout.strip().splitlines()[-1])
    for package in ("torch", "triton", "megatron-core"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = "not installed"
    info["python"] = platform.python_version()
    info["cpu"] = cpu_model()
    info["cpus"] = os.cpu_count()
    info["load"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    info["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return info


# ---------------------------------------------------------------- runs


def train_overrides(args, pack: Path, run_dir: Path, gpu: bool) -> list:
    far = args.steps + 1  # no periodic validation or checkpoint inside the timed steps; the final ones still run
    return [f"data.packs={pack}", f"run.dir={run_dir}", f"train.max_steps={args.steps}",
            f"train.log_every={args.log_every}", f"train.eval_every={far}", "train.eval_steps=1",
            f"checkpoint.every={far}", "checkpoint.keep=1", f"train.micro_batch_size={args.micro_batch}",
            f"train.global_batch_size={args.global_batch}", f"model.attention_backend={args.attention_backend}",
            f"train.precision={'bf16' if gpu else 'fp32'}", "logging.wandb=false", "logging.tensorboard=false"]


def run_train(config: str, overrides: list, run_dir: Path, smoke: bool) -> list:
    """One `nucleotron train` process; its output goes to RUN_DIR/train.log. Returns the metrics records."""
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "nucleotron.launch.cli", "train", "--config", config, *overrides]
    env = dict(os.environ, MASTER_PORT=str(free_port()))
    if smoke:  # two OpenMP threads on a busy 2-core machine spin: a tiny matmul took 6 ms instead of 30 us
        env.setdefault("OMP_NUM_THREADS", "1")
    with open(run_dir / "train.log", "w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env).returncode
    if code != 0:
        tail = (run_dir / "train.log").read_text()[-4000:]
        sys.exit(f"train_throughput: `{shlex.join(command)}` exited {code}\n--- log tail\n{tail}")
    with open(run_dir / "metrics.jsonl") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the final save: GBs we do not need
    return records


def summarise(records: list, warmup: int, log_every: int) -> dict:
    """Medians over train records whose window (step - log_every, step] lies after the warm-up steps."""
    kept = [r for r in records if r["kind"] == "train" and r["step"] - log_every >= warmup]
    if not kept:
        sys.exit("train_throughput: no train records after the warm-up; raise --steps or lower --warmup")
    mfus = [r["mfu"] for r in kept if r.get("mfu") is not None]
    return {"step_s": statistics.median(r["step_seconds"] for r in kept),
            "tok_s": statistics.median(r["tokens_per_s_per_device"] for r in kept),
            "mfu": statistics.median(mfus) if mfus else None,
            "steps": [r["step"] for r in kept]}


# ---------------------------------------------------------------- report


def report(args, info: dict, results: dict, flops: dict) -> list:
    lines = [f"train throughput: {os.path.relpath(args.config, REPO)}, {args.seq_len:,} tokens/sequence, "
             f"micro-batch {args.micro_batch}, global batch {args.global_batch}, {args.steps} steps, "
             f"first {args.warmup} left out",
             f"device {info['device']} | torch {info['torch']} (CUDA {info['cuda']}) | triton {info['triton']} | "
             f"megatron-core {info['megatron-core']} | python {info['python']} | {info['date']}",
             f"attention backend: {info['backend']} | precision: {'bf16' if info['cuda'] else 'fp32'} | "
             f"OMP_NUM_THREADS {os.environ.get('OMP_NUM_THREADS', '1 (smoke default)' if args.smoke else 'unset')}",
             ""]
    for name, r in results.items():
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        lines.append(f"{name:9s} median step {r['step_s']:8.3f} s | {r['tok_s']:12,.0f} tokens/s per device | "
                     f"MFU {mfu:>6s} | model {flops[name] / 1e9:.4g} GFLOP/token | records at steps {r['steps']}")
    ratio = results["gengram"]["step_s"] / results["baseline"]["step_s"]
    verdict = "not checked in a smoke run" if args.smoke else "met" if ratio <= RATIO_TARGET else "NOT met"
    lines += ["", f"Gengram / baseline step time: {ratio:.3f} (target <= {RATIO_TARGET}: {verdict}); "
              f"model-FLOPs ratio {flops['gengram'] / flops['baseline']:.3f} (the step-time ratio at equal MFU)"]
    if results["gengram"]["mfu"] is None:
        lines.append("MFU: not reported - no known peak FLOP/s for this device (CPU); the 35% target is not checked")
    else:
        for name, r in results.items():
            verdict = "met" if r["mfu"] >= MFU_TARGET else "NOT met"
            lines.append(f"MFU {name}: {r['mfu']:.1%} (target >= {MFU_TARGET:.0%}: {verdict})")
    if args.smoke:
        lines.append("(smoke run: tiny models on CPU in fp32; these numbers say nothing about GPU throughput)")
    return lines


def write_markdown(path: Path, args, info: dict, lines: list) -> None:
    title = "smoke run on CPU (not a performance claim)" if args.smoke else info["device"]
    text = [f"# training throughput, with and without Gengram: {title}", "",
            f"- Date: {info['date']}",
            f"- Machine: {info['device']}; {info['cpus']} x {info['cpu']} (load average before the runs: "
            f"{info['load']})",
            f"- Command (repository root, venv active): `{shlex.join(['python', *sys.argv])}`", "",
            "```", *lines, "```", ""]
    if args.smoke:
        text += ["Tiny models (configs/experiments/tiny-cpu.yaml) in fp32 on a shared CPU: this only shows that the",
                 "script runs end to end. It is not a measurement of Nucleotron's throughput and checks no target.", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text))


def main():
    args = parse_args()
    from nucleotron.configs import load_config
    from nucleotron.model.flops import training_flops_per_token

    if args.smoke:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the smoke run is the CPU path, even on a GPU node
    info = machine_info(args.attention_backend)
    gpu = info["cuda"] is not None
    if not gpu and not args.smoke:
        sys.exit("train_throughput: needs a CUDA GPU (use --smoke to check the script on CPU)")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="train-throughput-")).resolve()
    runs = {"baseline": (args.baseline_config or args.config,
                         [] if args.baseline_config else ["model.gengram.layers=[]"]),
            "gengram": (args.config, [])}
    try:
        pack = make_pack(work / "data", args)
        results, flops = {}, {}
        for name, (config, extra) in runs.items():
            overrides = train_overrides(args, pack, work / name, gpu) + extra + list(args.overrides)
            flops[name] = training_flops_per_token(load_config(config, overrides).model, args.seq_len)
            print(f"training {name}: {os.path.relpath(config, REPO)} {' '.join(extra)} "
                  f"(log: {work / name / 'train.log'})", flush=True)
            records = run_train(config, overrides, work / name, args.smoke)
            results[name] = summarise(records, args.warmup, args.log_every)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    lines = report(args, info, results, flops)
    print("\n".join(lines))
    if args.out:
        slug = "cpu-smoke" if args.smoke else info["device"].lower().replace(" ", "-")
        path = REPO / "benchmarks" / "results" / f"train_throughput-{slug}.md"
        write_markdown(path, args, info, lines)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
