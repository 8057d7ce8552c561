"""Where numbers go: RUN_DIR/metrics.jsonl (always), Weights & Biases and TensorBoard (by config), the console.

Only the logging rank (global rank 0) writes. After a resume, lines of metrics.jsonl newer than the checkpoint are
dropped first (they were logged by the preempted job and will be logged again), so the file of a preempted and
resumed run reads exactly like the file of an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import os
import time
import uuid
from typing import List, Optional

from nucleotron.configs import ConfigError, NucleotronConfig
from nucleotron.configs.files import write_atomic

from .mfu import mfu

METRICS_FILE = "metrics.jsonl"


def new_wandb_run_id() -> str:
    """An id chosen before the first `wandb.init`, so a requeued job can name the same run."""
    return uuid.uuid4().hex[:12]


def truncate_after(path: str, step: int) -> None:
    """Keep only records with step <= `step` (atomically: write a temporary file, then rename)."""
    if not os.path.isfile(path):
        return
    with open(path) as handle:
        lines = [line for line in handle if line.strip()]
    kept = []
    for line in lines:
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except ValueError:
            continue  # a line cut short by the kill
    write_atomic(path, "".join(kept))


def train_record(state, step_times: List[float], lr: float, grad_norm: float, tokens_per_step: int, world: int,
                 flops_per_token: float, peak: Optional[float]) -> dict:
    """The `train` line of the steps since the last one: mean loss and step time, throughput, MFU."""
    seconds = sum(step_times) / len(step_times)
    tokens_per_s = tokens_per_step / seconds
    per_device = tokens_per_s / world
    return {"kind": "train", "step": state.step, "loss": sum(state.unlogged_losses) / len(state.unlogged_losses),
            "lr": lr, "grad_norm": float(grad_norm), "tokens_per_s": tokens_per_s,
            "tokens_per_s_per_device": per_device, "mfu": mfu(flops_per_token, per_device, peak),
            "step_seconds": seconds, "consumed_samples": state.consumed_samples,
            "skipped_steps": state.skipped_steps}


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger:
    def __init__(self, cfg: NucleotronConfig, run_dir: str, active: bool, resume_step: int,
                 wandb_run_id: Optional[str], total_steps: int):
        self.active = active
        self.total_steps = total_steps
        self.path = os.path.join(run_dir, METRICS_FILE)
        self.wandb = None
        self.tensorboard = None
        self.started = time.time()
        if not active:
            return
        truncate_after(self.path, resume_step)
        self.file = open(self.path, "a", buffering=1)
        log = cfg.logging
        if log.wandb:
            import wandb

            self.wandb = wandb.init(
                project=log.wandb_project, name=log.wandb_name or cfg.run.name, tags=list(log.wandb_tags),
                mode=log.wandb_mode, dir=run_dir, id=wandb_run_id, resume="allow",
                config=_plain_config(cfg))
        if log.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("logging.tensorboard=true needs the tensorboard package: `pip install tensorboard`, "
                                  "or log to W&B (logging.wandb=true) / metrics.jsonl only") from None

            self.tensorboard = SummaryWriter(os.path.join(run_dir, "tensorboard"), purge_step=resume_step + 1)

    def log(self, record: dict) -> None:
        """One JSON line; W&B/TensorBoard get the same numbers under `train/...` or `valid/...`."""
        if not self.active:
            return
        record = {k: _finite_or_none(v) for k, v in record.items()}
        self.file.write(json.dumps(record) + "\n")
        kind, step = record["kind"], record["step"]
        numbers = {f"{kind}/{k}": v for k, v in record.items()
                   if k not in ("kind", "step") and isinstance(v, (int, float))}
        if self.wandb is not None:
            self.wandb.log(numbers, step=step)
        if self.tensorboard is not None:
            for key, value in numbers.items():
                self.tensorboard.add_scalar(key, value, step)

    def console(self, record: dict) -> None:
        if not self.active:
            return
        step = record["step"]
        elapsed = time.time() - self.started
        if record["kind"] == "train":
            parts = [f"step {step}/{self.total_steps}", f"loss {record['loss']:.4f}", f"lr {record['lr']:.2e}",
                     f"grad {record['grad_norm']:.3f}", f"{record['tokens_per_s']:,.0f} tok/s"]
            if record.get("mfu") is not None:
                parts.append(f"mfu {100 * record['mfu']:.1f}%")
            if record.get("skipped_steps"):
                parts.append(f"skipped {record['skipped_steps']}")
        else:
            parts = [f"valid @ {step}", f"loss {record['loss']:.4f}", f"{record['bits_per_base']:.4f} bits/base"]
            parts += [f"{key[:-5]} {value:.4f}" for key, value in record.items()
                      if key.endswith("/loss") and value is not None]
        parts.append(f"{elapsed / 60:.1f} min")
        print(" | ".join(parts), flush=True)

    def close(self) -> None:
        if not self.active:
            return
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _plain_config(cfg: NucleotronConfig) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)

