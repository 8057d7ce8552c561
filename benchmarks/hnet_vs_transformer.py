"""dnaHNet against a Transformer of matched parameters: training tokens/s and inference latency per base at growing
context, in one run.

The Transformer is built from the same blocks (RoPE attention + SwiGLU, RMSNorm, untied head): an H-Net layout with
no routing stage, ["T{n}"] at the H-Net main network's width, with n chosen so the parameter counts match. Both train
with AdamW on random DNA at the same tokens per step (batch = tokens / context). Inference reports two latencies
per base: scoring (one parallel forward of a batch-1 sequence, divided by its length) and generation (the recurrent
`step` path: Mamba-2 states, router / dechunk state and KV caches, averaged over the last positions of a sequence of
that length). The H-Net is untrained, so its routers' realised compression L/B (printed) is not its target; a
trained dnaHNet would sit near its targets.

    python benchmarks/hnet_vs_transformer.py                        # CPU: dnahnet-tiny, contexts 256..2048
    python benchmarks/hnet_vs_transformer.py --preset configs/models/dnahnet-2stage-32.yaml \
        --contexts 1024 4096 16384 --tokens-per-step 65536 --out benchmarks/results/hnet_vs_transformer-gpu.md
    python benchmarks/hnet_vs_transformer.py --smoke                # seconds: checks the script only

On a CUDA machine the same command runs there (bf16 autocast for training, fp32 decoding). GPU numbers are
unmeasured unless a results file in benchmarks/results/ says otherwise.
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=str(REPO / "configs/models/dnahnet-tiny.yaml"))
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--tokens-per-step", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per context (after 1 warm-up)")
    parser.add_argument("--decode-window", type=int, default=64, help="last positions whose step latency is averaged")
    parser.add_argument("--vocab", type=int, default=8)
    parser.add_argument("--out", help="also write the table to this markdown file")
    parser.add_argument("--smoke", action="store_true", help="tiny contexts and one step: checks the script runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.contexts, args.tokens_per_step, args.steps, args.decode_window = [32, 64], 128, 1, 8
    return args


def build_models(preset: str, vocab: int):
    from nucleotron.configs.loader import load_config
    from nucleotron.model.hnet import HNetLM

    hcfg = load_config(preset).model.hnet
    torch.manual_seed(0)
    hnet = HNetLM(hcfg, vocab)
    count = sum(p.numel() for p in hnet.parameters())
    inner = len(hcfg.d_model) - 1
    tcfg = copy.deepcopy(hcfg)
    tcfg.d_model, tcfg.d_intermediate = [hcfg.d_model[inner]], [hcfg.d_intermediate[inner]]
    tcfg.num_heads, tcfg.rotary_dim = [hcfg.num_heads[inner]], [hcfg.rotary_dim[inner]]
    tcfg.window, tcfg.lr_multipliers, tcfg.target_ratios = [-1], [1.0], []

    def transformer(layers: int):
        tcfg.layout = [f"T{layers}"]
        return HNetLM(tcfg, vocab)

    one, two = (sum(p.numel() for p in transformer(n).parameters()) for n in (1, 2))
    layers = max(1, round((count - (one - (two - one))) / (two - one)))
    return hnet, transformer(layers), layers


def train_speed(model, context: int, tokens: int, steps: int, device) -> float:
    """Tokens per second of forward + backward + AdamW at this context (median step time)."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = max(1, tokens // context)
    data = torch.randint(0, 4, (batch, context + 1), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    times = []
    for step in range(steps + 1):
        _sync(device)
        start = time.perf_counter()
        with autocast:
            out = model(data[:, :-1])
        loss = F.cross_entropy(out.logits.float().flatten(0, 1), data[:, 1:].flatten())
        if out.routers:
            loss = loss + 0.02 * sum(model.ratio_losses(out.routers))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if step:
            times.append(time.perf_counter() - start)
    return batch * context / statistics.median(times)


@torch.no_grad()
def inference_latency(model, context: int, window: int, device):
    """(scoring ms per base, generation ms per base over the last `window` positions, realised L/B per stage)."""
    model.eval()
    seq = torch.randint(0, 4, (1, context), device=device)
    _sync(device)
    start = time.perf_counter()
    out = model(seq)
    _sync(device)
    score = (time.perf_counter() - start) / context * 1e3
    compression = [r.mask.sum().item() / max(1, r.boundary.sum().item()) for r in out.routers]
    state = model.empty_state()
    for t in range(context - window):
        model.step(seq[:, t:t + 1], state)
    _sync(device)
    start = time.perf_counter()
    for t in range(context - window, context):
        model.step(seq[:, t:t + 1], state)
    _sync(device)
    return score, (time.perf_counter() - start) / window * 1e3, compression


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    hnet, transformer, layers = build_models(args.preset, args.vocab)
    hnet.to(device), transformer.to(device)
    n_h, n_t = (sum(p.numel() for p in m.parameters()) for m in (hnet, transformer))
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or 'unknown'}, " \
                                                                         f"{torch.get_num_threads()} threads)"
    lines = [f"# dnaHNet vs Transformer, {Path(args.preset).name}, {name}", "",
             f"H-Net: {n_h:,} parameters, layout {hnet.cfg.layout}. Transformer: {n_t:,} parameters, {layers} "
             f"attention+SwiGLU blocks at width {transformer.cfg.d_model[0]}. Training at {args.tokens_per_step} "
             f"tokens per step; generation latency averaged over the last {args.decode_window} positions.", "",
             "| context | train tok/s H-Net | train tok/s Transformer | ratio | score ms/base H-Net | score ms/base "
             "Transformer | generate ms/base H-Net | generate ms/base Transformer | ratio | H-Net L/B per stage |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for context in args.contexts:
        window = min(args.decode_window, context)
        th = train_speed(hnet, context, args.tokens_per_step, args.steps, device)
        tt = train_speed(transformer, context, args.tokens_per_step, args.steps, device)
        sh, gh, compression = inference_latency(hnet, context, window, device)
        st, gt, _ = inference_latency(transformer, context, window, device)
        row = (f"| {context} | {th:,.0f} | {tt:,.0f} | {th / tt:.2f} | {sh:.3f} | {st:.3f} | {gh:.3f} | {gt:.3f} | "
               f"{gt / gh:.2f} | {', '.join(f'{c:.2f}' for c in compression)} |")
        lines.append(row)
        print(row, flush=True)
    lines += ["", "ratio columns: H-Net / Transformer training throughput; Transformer / H-Net generation latency "
                  "(above 1: the H-Net is faster).", f"command: python {' '.join(sys.argv)}"]
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
