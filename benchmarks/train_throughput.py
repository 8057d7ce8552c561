"""Training throughput on one GPU: Nucleotron against the same architecture in Hugging Face transformers.

For each model (default MoE-1.2B and Dense-0.3B, 8,192 tokens) this makes one synthetic two-group pack and runs
`nucleotron train` twice as subprocesses, the baseline (model.gengram.layers=[]) and the Gengram model, then
trains the peer a genomics team would otherwise write in this process: `MixtralForCausalLM` (MoE) or
`LlamaForCausalLM` (dense) with the same layers, hidden size, heads, GQA groups, experts, top-k, FFN sizes,
vocabulary and RoPE base (its parameter count must equal Nucleotron's analytic count), on the same samples in the
same order, with bf16 autocast, SDPA attention, fused torch.optim.AdamW and the same clipping and batch sizes.

Nucleotron's numbers come from each run's metrics.jsonl; the peer is timed per optimizer step. Steps whose window
overlaps the first --warmup steps are dropped and medians are reported. MFU counts the same model FLOPs for both
(nucleotron.model.flops: active parameters + causal attention). Targets (issue 14, one H200, no
TransformerEngine): MFU >= 30% (MoE-1.2B) and >= 40% (Dense-0.3B), Nucleotron / transformers tokens/s >= 1.3,
Gengram / baseline step time <= 1.03.

    python benchmarks/train_throughput.py --no-save --out   # one GPU: both models; writes the report
    python benchmarks/train_throughput.py --smoke           # CPU: a tiny MoE model, fp32; checks the script only

--no-save stops each trainer once step --steps is logged, before any validation or checkpoint (the final
checkpoint is ~19 GB for MoE-1.2B). It writes benchmarks/results/train_throughput-<gpu>.md with --out. GPU numbers are unmeasured unless a
results file in benchmarks/results/ says otherwise.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = {  # name -> (config, extra overrides, MFU target)
    "MoE-1.2B": ("configs/models/moe-1.2b.yaml", [], 0.30),
    "Dense-0.3B": ("configs/models/dense-0.3b.yaml", [], 0.40),
}
SMOKE_MODELS = {"tiny-MoE": ("configs/experiments/tiny-cpu.yaml",
                             ["model.moe.num_experts=4", "model.moe.top_k=2", "model.moe.ffn_hidden_size=32"], None)}
NO_SAVE_EXTRA_STEPS = 1000
PEER_RATIO_TARGET = 1.3
GENGRAM_RATIO_TARGET = 1.03


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU: a tiny MoE model, short sequences, a few steps")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                        help="models to measure (default: all)")
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=20, help="training steps per run")
    parser.add_argument("--warmup", type=int, default=8, help="first steps left out of the numbers")
    parser.add_argument("--log-every", type=int, default=4, help="steps per metrics record (the timing window)")
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--attention-backend", default="auto", help="auto | flash | sdpa (model.attention_backend)")
    parser.add_argument("--no-save", action="store_true",
                        help="stop each trainer after its last step is logged: no final validation or checkpoint")
    parser.add_argument("--no-peer", action="store_true", help="skip the Hugging Face transformers peer")
    parser.add_argument("--workdir", default=None, help="pack and runs (default: a temporary folder, removed)")
    parser.add_argument("--out", action="store_true",
                        help="also write the report as markdown to benchmarks/results/train_throughput-<device>.md")
    parser.add_argument("overrides", nargs="*",
                        help="extra dotted overrides for every Nucleotron run, e.g. model.recompute=selective")
    args = parser.parse_args(argv)
    args.models = {name: MODELS[name] for name in args.models}
    if args.smoke:
        args.models = SMOKE_MODELS
        args.seq_len, args.steps, args.warmup, args.log_every = 128, 4, 2, 2
        args.micro_batch, args.global_batch = 2, 4
    if args.warmup >= args.steps:
        parser.error("--warmup must be below --steps, or nothing is left to measure")
    if args.no_save and args.steps % args.log_every:
        parser.error("--no-save stops a run when step --steps is logged: make --steps a multiple of --log-every")
    return args


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


def device_facts(attention_backend: str) -> dict:
    import torch

    from nucleotron.model.attention import resolve_backend
    from nucleotron.train.no_te_mode import transformer_engine_importable

    cuda = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name() if cuda else "cpu", "cuda": torch.version.cuda if cuda else None,
            "backend": resolve_backend(attention_backend),
            "layers": "TransformerEngine" if cuda and transformer_engine_importable() else "torch-native"}


def machine_info(attention_backend: str, smoke: bool) -> dict:
    """On a GPU asked in a child process, so this one holds no CUDA context while the trainers run."""
    if smoke:
        info = device_facts(attention_backend)
    else:
        probe = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                 f"from train_throughput import device_facts; print(json.dumps(device_facts({attention_backend!r})))")
        info = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                         check=True).stdout.strip().splitlines()[-1])
    for package in ("torch", "triton", "megatron-core", "transformers", "transformer-engine"):
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


# ---------------------------------------------------------------- Nucleotron runs


def trainer_steps(args) -> int:
    return args.steps + (NO_SAVE_EXTRA_STEPS if args.no_save else 0)


def train_overrides(args, pack: Path, run_dir: Path, gpu: bool) -> list:
    # --no-save: the run is set longer than --steps and killed after step --steps, so it never reaches the final
    # validation and checkpoint (the schedule's warmup stretches with it; throughput does not depend on the LR)
    max_steps = trainer_steps(args)
    far = max_steps + 1  # no periodic validation or checkpoint inside the run
    return [f"data.packs={pack}", f"run.dir={run_dir}", f"train.max_steps={max_steps}",
            f"train.log_every={args.log_every}", f"train.eval_every={far}", "train.eval_steps=1",
            f"checkpoint.every={far}", "checkpoint.keep=1", f"train.micro_batch_size={args.micro_batch}",
            f"train.global_batch_size={args.global_batch}", f"model.attention_backend={args.attention_backend}",
            f"train.precision={'bf16' if gpu else 'fp32'}", "logging.wandb=false", "logging.tensorboard=false"]


def read_records(path: Path) -> list:
    if not path.exists():
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip().endswith("}")]


def run_train(config: str, overrides: list, run_dir: Path, args) -> list:
    """One `nucleotron train` process; its output goes to RUN_DIR/train.log. Returns the metrics records.

    With --no-save the process is killed once step --steps is logged (SIGKILL: the trainer saves on SIGTERM)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "nucleotron.launch.cli", "train", "--config", config, *overrides]
    env = dict(os.environ, MASTER_PORT=str(free_port()))
    if args.smoke:  # two OpenMP threads on a busy 2-core machine spin: a tiny matmul took 6 ms instead of 30 us
        env.setdefault("OMP_NUM_THREADS", "1")
    metrics = run_dir / "metrics.jsonl"
    with open(run_dir / "train.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        while process.poll() is None:
            if args.no_save and any(r["kind"] == "train" and r["step"] >= args.steps for r in read_records(metrics)):
                process.kill()
                process.wait()
                break
            time.sleep(0.5)
    if process.returncode != 0 and not (args.no_save and process.returncode < 0):
        tail = (run_dir / "train.log").read_text()[-4000:]
        sys.exit(f"train_throughput: `{shlex.join(command)}` exited {process.returncode}\n--- log tail\n{tail}")
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the final save, if any: GBs we do not need
    return read_records(metrics)


def summarise(records: list, warmup: int, log_every: int) -> dict:
    """Medians over train records whose window (step - log_every, step] lies after the warm-up steps."""
    kept = [r for r in records if r["kind"] == "train" and r["step"] - log_every >= warmup]
    if not kept:
        sys.exit("train_throughput: no train records after the warm-up; raise --steps or lower --warmup")
    mfus = [r["mfu"] for r in kept if r.get("mfu") is not None]
    return {"step_s": statistics.median(r["step_seconds"] for r in kept),
            "tok_s": statistics.median(r["tokens_per_s_per_device"] for r in kept),
            "mfu": statistics.median(mfus) if mfus else None}


# ---------------------------------------------------------------- the transformers peer


def peer_model(model_cfg, device="cpu"):
    """MixtralForCausalLM (MoE) or LlamaForCausalLM (dense) with Nucleotron's architecture: no biases, untied
    embeddings, RMSNorm, SwiGLU, RoPE with the same base; Mixtral's top-k softmax router and aux loss."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

    from nucleotron.model.params import head_dim

    if model_cfg.attention != "standard":
        raise ValueError(f"the transformers peer covers MHA/GQA, not model.attention={model_cfg.attention}")
    common = dict(vocab_size=model_cfg.vocab_size, hidden_size=model_cfg.hidden_size,
                  num_hidden_layers=model_cfg.num_layers, num_attention_heads=model_cfg.num_attention_heads,
                  num_key_value_heads=model_cfg.num_query_groups or model_cfg.num_attention_heads,
                  head_dim=head_dim(model_cfg), rope_theta=float(model_cfg.rope_base), rms_norm_eps=model_cfg.norm_eps,
                  max_position_embeddings=8192, tie_word_embeddings=False, attention_dropout=0.0,
                  initializer_range=model_cfg.init_std, attn_implementation="sdpa", use_cache=False)
    moe = model_cfg.moe
    with torch.device(device):
        if moe.num_experts:
            config = MixtralConfig(intermediate_size=moe.ffn_hidden_size or model_cfg.ffn_hidden_size,
                                   num_local_experts=moe.num_experts, num_experts_per_tok=moe.top_k,
                                   output_router_logits=True, router_aux_loss_coef=moe.aux_loss_coeff,
                                   router_jitter_noise=0.0, **common)
            return MixtralForCausalLM(config)
        config = LlamaConfig(intermediate_size=model_cfg.ffn_hidden_size, attention_bias=False, mlp_bias=False,
                             **common)
        return LlamaForCausalLM(config)


def peer_samples(pack: Path, cfg, args, cache: Path):
    """The Nucleotron trainer's samples in its order: the same GPTDataset blend, seed and global-batch sampler."""
    import torch.distributed as dist

    from nucleotron.data_prep.manifest import load_manifest
    from nucleotron.train.data import GlobalBatchSampler, build_train_dataset

    if not dist.is_initialized():  # megatron's dataset builder coordinates its index cache over a process group
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    total = trainer_steps(args) * args.global_batch  # the blend's order depends on its size: build the trainer's
    dataset = build_train_dataset(load_manifest(str(pack)), total, cfg.run.seed, str(cache))
    return dataset, GlobalBatchSampler(total, 0, args.micro_batch, args.global_batch, 0, 1)


def run_peer(pack: Path, cfg, args, gpu: bool, cache: Path) -> dict:
    """Train the peer for --steps optimizer steps; median step time over the steps after --warmup."""
    import torch
    import torch.nn.functional as F

    device = torch.device("cuda" if gpu else "cpu")
    torch.manual_seed(cfg.run.seed)
    model = peer_model(cfg.model, device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.adam_beta1,
                                  cfg.optim.adam_beta2), eps=cfg.optim.adam_eps, weight_decay=cfg.optim.weight_decay,
                                  fused=gpu)
    dataset, sampler = peer_samples(pack, cfg, args, cache)
    micro_per_step = args.global_batch // args.micro_batch
    batches = iter(sampler)
    step_seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        for _ in range(micro_per_step):
            items = [dataset[i] for i in next(batches)]
            tokens = torch.stack([item["tokens"] for item in items]).to(device, non_blocking=True)
            labels = torch.stack([item["labels"] for item in items]).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu):
                out = model(input_ids=tokens)
                loss = F.cross_entropy(out.logits.float().flatten(0, 1), labels.flatten())
                if getattr(out, "aux_loss", None) is not None:
                    loss = loss + model.config.router_aux_loss_coef * out.aux_loss
            (loss / micro_per_step).backward()
        if cfg.optim.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if gpu:
            torch.cuda.synchronize()
        step_seconds.append(time.perf_counter() - start)
    if not math.isfinite(loss.item()):
        sys.exit(f"train_throughput: the transformers peer's loss is {loss.item()}")
    params = sum(p.numel() for p in model.parameters())
    del model, optimizer
    if gpu:
        torch.cuda.empty_cache()
    step = statistics.median(step_seconds[args.warmup:])
    return {"step_s": step, "tok_s": args.global_batch * args.seq_len / step, "params": params}


# ---------------------------------------------------------------- report


def report(args, info: dict, results: dict) -> list:
    from nucleotron.train.mfu import mfu, peak_tflops

    peak = peak_tflops(None)  # what the trainer divides by: the device's bf16 peak, None on CPU
    lines = [f"train throughput: {args.seq_len:,} tokens/sequence, micro-batch {args.micro_batch}, global batch "
             f"{args.global_batch}, {args.steps} steps, first {args.warmup} left out",
             f"device {info['device']} | torch {info['torch']} (CUDA {info['cuda']}) | triton {info['triton']} | "
             f"megatron-core {info['megatron-core']} | transformers {info['transformers']} | transformer-engine "
             f"{info['transformer-engine']} | python {info['python']} | {info['date']}",
             f"Nucleotron layers: {info['layers']} (model.te=auto) | attention backend: {info['backend']} | "
             f"precision: {'bf16' if info['cuda'] else 'fp32'}", "",
             f"{'model':11s} {'run':24s} {'step s':>8s} {'tokens/s':>12s} {'MFU':>7s}"]
    checks = []
    for name, r in results.items():
        rows = [("Nucleotron", r["baseline"]), ("Nucleotron + Gengram", r["gengram"])]
        if r.get("peer"):
            peer_mfu = mfu(r["flops"]["baseline"], r["peer"]["tok_s"], peak)
            rows.append(("transformers peer", {**r["peer"], "mfu": peer_mfu}))
        for label, row in rows:
            shown = f"{row['mfu']:.1%}" if row.get("mfu") is not None else "n/a"
            lines.append(f"{name:11s} {label:24s} {row['step_s']:8.3f} {row['tok_s']:12,.0f} {shown:>7s}")
        gengram_ratio = r["gengram"]["step_s"] / r["baseline"]["step_s"]
        checks.append((f"{name}: Gengram / baseline step time {gengram_ratio:.3f} (model-FLOPs ratio "
                       f"{r['flops']['gengram'] / r['flops']['baseline']:.3f})", gengram_ratio <= GENGRAM_RATIO_TARGET,
                       f"<= {GENGRAM_RATIO_TARGET}"))
        if r.get("peer"):
            ratio = r["baseline"]["tok_s"] / r["peer"]["tok_s"]
            checks.append((f"{name}: Nucleotron / transformers tokens/s {ratio:.2f} (parameters: peer "
                           f"{r['peer']['params']:,}, Nucleotron analytic {r['params']:,})",
                           ratio >= PEER_RATIO_TARGET, f">= {PEER_RATIO_TARGET}"))
        if r["target_mfu"] is not None and r["baseline"]["mfu"] is not None:
            checks.append((f"{name}: Nucleotron MFU {r['baseline']['mfu']:.1%}",
                           r["baseline"]["mfu"] >= r["target_mfu"], f">= {r['target_mfu']:.0%}"))
    lines.append("")
    for text, met, target in checks:
        verdict = "not checked in a smoke run" if args.smoke else "met" if met else "NOT met"
        lines.append(f"{text} (target {target}: {verdict})")
    if args.smoke:
        lines.append("(smoke run: tiny models on CPU in fp32; these numbers say nothing about GPU throughput)")
    return lines


def write_markdown(path: Path, args, info: dict, lines: list) -> None:
    title = "smoke run on CPU (not a performance claim)" if args.smoke else info["device"]
    text = [f"# training throughput, Nucleotron vs Hugging Face transformers, with and without Gengram: {title}", "",
            f"- Date: {info['date']}",
            f"- Machine: {info['device']}; {info['cpus']} x {info['cpu']} (load average before the runs: "
            f"{info['load']})",
            f"- Command (repository root, venv active): `{shlex.join(['python', *sys.argv])}`", "",
            "```", *lines, "```", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text))


def measure_model(name: str, config: str, extra: list, target, pack: Path, work: Path, args, gpu: bool) -> dict:
    from nucleotron.configs import load_config
    from nucleotron.model.flops import training_flops_per_token
    from nucleotron.model.params import count_parameters

    config = str(REPO / config)
    result = {"flops": {}, "target_mfu": target}
    runs = {"baseline": ["model.gengram.layers=[]"], "gengram": []}
    for run, run_extra in runs.items():
        run_dir = work / name / run
        overrides = train_overrides(args, pack, run_dir, gpu) + extra + run_extra + list(args.overrides)
        cfg = load_config(config, overrides)
        result["flops"][run] = training_flops_per_token(cfg.model, args.seq_len)
        print(f"{name}: training Nucleotron {run} (log: {run_dir / 'train.log'})", flush=True)
        result[run] = summarise(run_train(config, overrides, run_dir, args), args.warmup, args.log_every)
        if run == "baseline":
            baseline_cfg = cfg
    result["params"] = count_parameters(baseline_cfg.model)["total_params"]
    if not args.no_peer:
        print(f"{name}: training the transformers peer", flush=True)
        result["peer"] = run_peer(pack, baseline_cfg, args, gpu, work / name / "peer-index-cache")
        if result["peer"]["params"] != result["params"]:
            sys.exit(f"train_throughput: the transformers peer of {name} has {result['peer']['params']:,} parameters,"
                     f" Nucleotron's analytic count is {result['params']:,}: the architectures differ")
    return result


def main(argv=None):
    args = parse_args(argv)
    if args.smoke:
        import torch

        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the smoke run is the CPU path, even on a GPU node
        torch.set_num_threads(1)  # as the trainers: OpenMP threads spin on a busy machine (one step took 19 s)
    info = machine_info(args.attention_backend, args.smoke)
    gpu = info["cuda"] is not None
    if not gpu and not args.smoke:
        sys.exit("train_throughput: needs a CUDA GPU (use --smoke to check the script on CPU)")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="train-throughput-")).resolve()
    try:
        pack = make_pack(work / "data", args)
        results = {name: measure_model(name, config, extra, target, pack, work, args, gpu)
                   for name, (config, extra, target) in args.models.items()}
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    lines = report(args, info, results)
    print("\n".join(lines))
    if args.out:
        slug = "cpu-smoke" if args.smoke else info["device"].lower().replace(" ", "-")
        path = REPO / "benchmarks" / "results" / f"train_throughput-{slug}.md"
        write_markdown(path, args, info, lines)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
