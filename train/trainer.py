"""The training loop, top to bottom: packs -> megatron-core model -> steps, validation, checkpoints, metrics.

One call, `train(cfg)`, on every rank. It resumes from RUN_DIR/checkpoints/latest when there is one, so re-running
the same command (or a requeued Slurm job) continues where the last complete checkpoint left off, bit-exactly on
CPU. SIGTERM/SIGUSR1 save at the next step boundary and return REQUEUE_EXIT_CODE.
"""
from __future__ import annotations

import math
import os
import random
import time
from functools import partial
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.optimizer_param_scheduler import get_canonical_lr_for_logging
from megatron.core.pipeline_parallel import get_forward_backward_func
from omegaconf import OmegaConf

from nucleotron.configs import ConfigError, NucleotronConfig, to_yaml
from nucleotron.configs.exit_codes import REQUEUE_EXIT_CODE
from nucleotron.data_prep.manifest import load_manifest
from nucleotron.model.flops import training_flops_per_token
from nucleotron.model.gpt import build_gpt_model
from nucleotron.model.stats import model_stats

from . import checkpoint as ckpt
from .data import GlobalBatchSampler, build_train_dataset, build_valid_datasets, fixed_micro_batches, micro_batches, stack
from .metrics import MetricsLogger, new_wandb_run_id, note
from .mfu import mfu, peak_tflops
from .files import write_text_atomic
from .optimizer import build_optimizer, hook_model_config, wrap_ddp
from .parallel import destroy_distributed, init_distributed
from .signals import PREEMPTION_SIGNALS, PreemptionWatch

SPIKE_WINDOW = 20


class BadLossError(RuntimeError):
    """A NaN/inf loss or a loss spike with `train.bad_loss=stop`."""


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _unwrap(model):
    while hasattr(model, "module"):
        model = model.module
    return model


def _all_reduce_sum(values: List[float]) -> List[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=_device())
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()


# ---------------------------------------------------------------- one micro-batch through the model


def _loss_report(eod: int, labels: torch.Tensor, loss_mask: torch.Tensor, per_token_loss: torch.Tensor):
    """(loss sum, token count, report): megatron's schedule divides by the count. loss_mask may hold weights below 1
    (down-weighted soft-masked bases): the gradient then follows the weighted mean sum(w*l)/sum(w), scaled so that
    megatron's division by the (integer) count gives it. The report holds unweighted sums over every counted target,
    and over base targets (EOD excluded) for bits per base, so reported losses compare across weightings."""
    losses = per_token_loss.float()
    weights = loss_mask.float()
    mask = (weights > 0).float()
    base = mask * (labels != eod).float()
    count = mask.sum()
    total = (losses * weights).sum() * (count / weights.sum().clamp(min=1e-12))   # count/sum = 1.0 exactly if 0/1
    report = torch.stack([(losses * mask).sum().detach(), count, (losses * base).sum().detach(), base.sum()])
    return total, count.to(torch.int), {"sums": report}


def _forward_step(eod: int, data_iterator, model):
    batch = next(data_iterator)
    device = _device()
    tokens = batch["tokens"].to(device, non_blocking=True)
    labels = batch["labels"].to(device, non_blocking=True)
    positions = batch["position_ids"].to(device, non_blocking=True)
    output = model(tokens, positions, None, labels=labels)  # every stage reads the batch: Gengram needs the ids
    return output, partial(_loss_report, eod, labels, batch["loss_mask"].to(device))


def _sum_reports(reports: List[dict]) -> List[float]:
    """This rank's [loss sum, tokens, base-loss sum, bases]; counted once per TP group on the last stage."""
    sums = torch.zeros(4, dtype=torch.float64)
    if parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0:
        for report in reports:
            sums += report["sums"].double().cpu()
    return sums.tolist()


# ---------------------------------------------------------------- validation


def evaluate(model, valid_sets: Dict[str, object], cfg: NucleotronConfig, eod: int, seq_len: int) -> Dict[str, float]:
    """Loss and bits per base on each group's fixed validation set, and over both (the 1:1 mix)."""
    forward_backward = get_forward_backward_func()
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    samples = cfg.train.eval_steps * cfg.train.global_batch_size
    model.eval()
    sums = {}
    with torch.no_grad():
        for group, dataset in valid_sets.items():
            batches = fixed_micro_batches(dataset, samples, cfg.train.micro_batch_size, dp_rank, dp_size)
            reports = forward_backward(
                forward_step_func=partial(_forward_step, eod), data_iterator=iter(stack(dataset, b) for b in batches),
                model=[model], num_microbatches=len(batches), seq_length=seq_len,
                micro_batch_size=cfg.train.micro_batch_size, forward_only=True)
            sums[group] = _all_reduce_sum(_sum_reports(reports))
    model.train()
    result: Dict[str, float] = {}
    total = [0.0] * 4
    for group, (loss_sum, tokens, base_sum, bases) in sums.items():
        result[f"{group}/loss"] = loss_sum / tokens
        result[f"{group}/bits_per_base"] = base_sum / bases / math.log(2)
        total = [a + b for a, b in zip(total, sums[group])]
    if sums:
        result["loss"] = total[0] / total[1]
        result["bits_per_base"] = total[2] / total[3] / math.log(2)
    return result


# ---------------------------------------------------------------- setup helpers


def check_resume_config(saved_yaml: str, cfg: NucleotronConfig, directory: str) -> None:
    """A checkpoint of another architecture cannot continue this run: say which keys differ."""
    saved = OmegaConf.to_container(OmegaConf.create(saved_yaml).get("model", {}), resolve=True)
    current = OmegaConf.to_container(OmegaConf.structured(cfg.model), resolve=True)

    def flat(tree, prefix="model"):
        out = {}
        for key, value in tree.items():
            out.update(flat(value, f"{prefix}.{key}") if isinstance(value, dict) else {f"{prefix}.{key}": value})
        return out

    a, b = flat(saved), flat(current)
    differing = [f"{k}: checkpoint {a.get(k)!r}, config {b.get(k)!r}" for k in sorted(set(a) | set(b))
                 if a.get(k) != b.get(k) and k != "model.recompute" and k != "model.attention_backend"]
    if differing:
        raise ConfigError(f"{directory} holds a different model than the config ({'; '.join(differing)}); "
                          f"resume with the same model settings or use a new run.dir")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _total_steps(cfg: NucleotronConfig, seq_len: int) -> int:
    if cfg.train.max_steps is not None:
        return int(cfg.train.max_steps)
    if cfg.train.max_tokens is not None:
        return max(1, math.ceil(cfg.train.max_tokens / (cfg.train.global_batch_size * seq_len)))
    raise ConfigError("set train.max_steps or train.max_tokens (the run's length)")


def _wandb_run_id(run_dir: str, saved: Optional[str]) -> str:
    """The checkpoint's id; else the id a job that died before its first checkpoint recorded; else a new one."""
    path = os.path.join(run_dir, "wandb-run-id")
    if saved:
        return saved
    if os.path.isfile(path):
        with open(path) as handle:
            return handle.read().strip()
    run_id = new_wandb_run_id()
    write_text_atomic(path, run_id + "\n")
    return run_id


def _is_bad(loss: float, recent: List[float], spike_factor: Optional[float]) -> Optional[str]:
    if not math.isfinite(loss):
        return f"loss is {loss}"
    if spike_factor is not None and len(recent) >= SPIKE_WINDOW // 2:
        mean = sum(recent) / len(recent)
        if loss > spike_factor * mean:
            return f"loss {loss:.4f} is above {spike_factor} x the recent mean {mean:.4f}"
    return None


# ---------------------------------------------------------------- the loop


def train(cfg: NucleotronConfig) -> int:
    # The handlers stay installed until the process exits: a signal during the final validation or save (or
    # teardown) is recorded, not fatal, and the finished run still exits 0.
    watch = PreemptionWatch().install()
    try:
        return _train(cfg, watch)
    finally:
        destroy_distributed()


def resolve_inputs(cfg: NucleotronConfig):
    """The pack's manifest, with the config adapted to it (sequence length, CPU precision) or a clear error."""
    if not cfg.data.packs:
        raise ConfigError("data.packs is not set: make packs with `nucleotron data prep ... --out DIR` and pass "
                          "data.packs=DIR")
    manifest = load_manifest(cfg.data.packs)
    if cfg.data.seq_len != manifest.seq_len:
        note(f"data.seq_len follows the pack: {manifest.seq_len} (config had {cfg.data.seq_len})")
        cfg.data.seq_len = manifest.seq_len
    if max(manifest.vocab.values()) >= cfg.model.vocab_size:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is too small for the pack's token ids "
                          f"(largest {max(manifest.vocab.values())}); use at least {manifest.vocab_size}")
    if cfg.data.soft_masked_loss_weight != 1.0 and manifest.soft_mask_bit is None:
        raise ConfigError(f"data.soft_masked_loss_weight={cfg.data.soft_masked_loss_weight} needs soft-mask bits, but "
                          f"{manifest.directory} was made without them; re-run `nucleotron data prep` with "
                          f"--soft-mask, or set data.soft_masked_loss_weight=1")
    if "train" not in manifest.blend:
        raise ConfigError(f"{manifest.directory} has no train split; re-run `nucleotron data prep` with fewer "
                          f"held-out chromosomes")
    if not torch.cuda.is_available() and cfg.train.precision != "fp32":
        note("no CUDA device: CPU mode trains in fp32 (train.precision=bf16 applies on GPUs)")
        cfg.train.precision = "fp32"
    return manifest


def _train(cfg: NucleotronConfig, watch: PreemptionWatch) -> int:
    manifest = resolve_inputs(cfg)
    seq_len = manifest.seq_len

    init_distributed(cfg.parallel, cfg.run.seed)
    rank = dist.get_rank()
    _seed_everything(cfg.run.seed + 100 * parallel_state.get_pipeline_model_parallel_rank())
    run_dir = os.path.abspath(cfg.run.dir)
    ckpt_root = os.path.join(run_dir, "checkpoints")
    if rank == 0:
        os.makedirs(run_dir, exist_ok=True)
        ckpt.clean_partial_saves(ckpt_root)
        restarts = os.environ.get("SLURM_RESTART_COUNT")
        if restarts is not None:
            print(f"SLURM_RESTART_COUNT={restarts}", flush=True)
    dist.barrier()

    dp_size = parallel_state.get_data_parallel_world_size()
    t = cfg.train
    if t.global_batch_size % (t.micro_batch_size * dp_size):
        raise ConfigError(f"train.global_batch_size={t.global_batch_size} is not divisible by "
                          f"train.micro_batch_size={t.micro_batch_size} x data-parallel size {dp_size}")
    num_microbatches = t.global_batch_size // (t.micro_batch_size * dp_size)
    total_steps = _total_steps(cfg, seq_len)

    # model, DDP, optimizer, schedule
    gpu = torch.cuda.is_available()
    bf16 = cfg.train.precision == "bf16"
    distributed_optimizer = gpu and dp_size > 1
    model = build_gpt_model(cfg, vocab=manifest.vocab, pre_process=parallel_state.is_pipeline_first_stage(),
                            post_process=parallel_state.is_pipeline_last_stage())
    model.to(_device())
    if bf16:
        from megatron.core.transformer.module import Float16Module

        model = Float16Module(model.config, model)
    model = wrap_ddp(model, cfg, distributed_optimizer)
    optimizer, scheduler = build_optimizer(model, cfg, total_steps, bf16, distributed_optimizer)
    hook_model_config(model, optimizer)

    # resume
    state = ckpt.TrainerState()
    resume_dir = ckpt.find_resumable(ckpt_root)
    if resume_dir is not None:
        check_resume_config(ckpt.read_state(resume_dir).config_yaml, cfg, resume_dir)
        state = ckpt.load_checkpoint(resume_dir, model.module, optimizer)
        scheduler.load_state_dict(state.scheduler)
        if rank == 0:
            note(f"resumed from {resume_dir} at step {state.step} ({state.consumed_samples:,} samples consumed)")
    state.config_yaml = to_yaml(cfg)
    if rank == 0:
        write_text_atomic(os.path.join(run_dir, "config.yaml"), state.config_yaml)
        if cfg.logging.wandb:
            state.wandb_run_id = _wandb_run_id(run_dir, state.wandb_run_id)

    # data
    cache_dir = os.path.join(run_dir, "index-cache")
    train_set = build_train_dataset(manifest, total_steps * t.global_batch_size, cfg.run.seed, cache_dir,
                                    cfg.data.soft_masked_loss_weight)
    valid_sets = build_valid_datasets(manifest, t.eval_steps * t.global_batch_size, cfg.run.seed, cache_dir)
    sampler = GlobalBatchSampler(total_steps * t.global_batch_size, state.consumed_samples, t.micro_batch_size,
                                 t.global_batch_size, parallel_state.get_data_parallel_rank(), dp_size)
    batches = micro_batches(train_set, sampler, cfg.data.num_workers, cfg.run.seed)

    flops_per_token = training_flops_per_token(cfg.model, seq_len)
    peak = peak_tflops(t.peak_tflops)
    logger = MetricsLogger(cfg, run_dir, rank == 0, state.step, state.wandb_run_id, total_steps)
    if rank == 0:
        note(f"training {total_steps} steps of {t.global_batch_size} x {seq_len} tokens on {dist.get_world_size()} "
             f"process(es) (TP {cfg.parallel.tensor}, PP {cfg.parallel.pipeline}, EP {cfg.parallel.expert}, "
             f"DP {dp_size}), {num_microbatches} micro-batches per step; run dir {run_dir}")
        if peak is None:
            note("MFU is not reported: unknown device peak; set train.peak_tflops")

    ckpt.start_checkpoint_writer(PREEMPTION_SIGNALS)
    forward_backward = get_forward_backward_func()
    step_times: List[float] = []
    last_saved = state.step if resume_dir is not None else -1
    last_eval = -1

    def save():
        nonlocal last_saved
        if last_saved == state.step:
            return
        state.scheduler = scheduler.state_dict()
        ckpt.save_checkpoint(ckpt_root, model.module, optimizer, state, cfg.checkpoint.keep)
        last_saved = state.step

    def validate():
        nonlocal last_eval
        if not valid_sets or last_eval == state.step:
            return
        record = {"kind": "valid", "step": state.step,
                  **evaluate(model, valid_sets, cfg, manifest.eod, seq_len)}
        logger.log(record)
        logger.console(record)
        last_eval = state.step

    try:
        while state.step < total_steps:
            if watch.stop_requested():
                save()
                if rank == 0:
                    note(f"saved step {state.step} after a preemption signal; exiting {REQUEUE_EXIT_CODE} "
                         f"(requeue me)")
                return REQUEUE_EXIT_CODE

            started = time.perf_counter()
            model.zero_grad_buffer()
            optimizer.zero_grad()
            reports = forward_backward(
                forward_step_func=partial(_forward_step, manifest.eod), data_iterator=batches, model=[model],
                num_microbatches=num_microbatches, seq_length=seq_len, micro_batch_size=t.micro_batch_size,
                forward_only=False)
            loss_sum, tokens, _, _ = _all_reduce_sum(_sum_reports(reports))
            loss = loss_sum / tokens if tokens else float("nan")
            problem = _is_bad(loss, state.recent_losses, t.loss_spike_factor)
            grad_norm = float("nan")
            if problem is not None:
                if t.bad_loss == "stop":
                    raise BadLossError(f"step {state.step + 1}: {problem}; stopping (train.bad_loss=stop). The last "
                                       f"checkpoint is in {ckpt_root}; resume with train.bad_loss=skip to skip "
                                       f"such steps")
                state.skipped_steps += 1
                if rank == 0:
                    note(f"step {state.step + 1}: {problem}; skipping the update ({state.skipped_steps} skipped)")
            else:
                updated, grad_norm, _ = optimizer.step()
                if updated:
                    scheduler.step(increment=1)
                state.recent_losses = (state.recent_losses + [loss])[-SPIKE_WINDOW:]
            if gpu:
                torch.cuda.synchronize()
            step_times.append(time.perf_counter() - started)
            state.unlogged_losses.append(loss)
            state.step += 1
            state.consumed_samples += t.global_batch_size

            if state.step % t.log_every == 0 or state.step == total_steps:
                seconds = sum(step_times) / len(step_times)
                mean_loss = sum(state.unlogged_losses) / len(state.unlogged_losses)
                step_times.clear()
                state.unlogged_losses = []
                tokens_per_s = t.global_batch_size * seq_len / seconds
                per_device = tokens_per_s / dist.get_world_size()
                record = {"kind": "train", "step": state.step, "loss": mean_loss,
                          "lr": get_canonical_lr_for_logging(optimizer.param_groups), "grad_norm": float(grad_norm),
                          "tokens_per_s": tokens_per_s, "tokens_per_s_per_device": per_device,
                          "mfu": mfu(flops_per_token, per_device, peak), "step_seconds": seconds,
                          "consumed_samples": state.consumed_samples, "skipped_steps": state.skipped_steps,
                          **_gathered_stats(_unwrap(model))}
                logger.log(record)
                logger.console(record)
            if state.step % t.eval_every == 0:
                validate()
            if state.step % cfg.checkpoint.every == 0:
                save()
            if t.stop_at_step is not None and state.step >= t.stop_at_step and state.step < total_steps:
                save()
                if rank == 0:
                    note(f"stopped at step {state.step} (train.stop_at_step); re-run the command to continue")
                return 0
        validate()
        save()
        return 0
    finally:
        logger.close()


def _gathered_stats(model) -> Dict[str, float]:
    """Gengram gate means and MoE load statistics, averaged over the ranks that hold each layer."""
    local = model_stats(model)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    merged: Dict[str, List[float]] = {}
    for stats in gathered:
        for key, value in stats.items():
            merged.setdefault(key, []).append(value)
    return {key: sum(values) / len(values) for key, values in sorted(merged.items())}

