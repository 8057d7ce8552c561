"""The engine seam: what differs between training engines, behind one small protocol.

The loop (`train/trainer.py`) owns everything engine-agnostic: the data position and the batches, RNG states,
preemption signals and the requeue exit, the run directory (lock, config, checkpoint layout, `latest`, retention,
verification), metrics.jsonl, W&B, validation and bits per base, the bad-loss policy. An engine owns the model and
how it runs: process groups and model parallelism, building model + optimizer + LR schedule, forward/backward of one
global batch, the optimizer step, and saving/loading model and optimizer state inside a checkpoint directory the
loop gives it.

Engines (registered below by `model.arch`, imported lazily):
- `gpt`:  megatron-core GPTModel (dense / MoE, TP/PP/EP/SP) with megatron DDP and optimizer: `engines/megatron.py`.
- `hnet`: the H-Net family through DeepSpeed (ZeRO 1/2/3): `engines/deepspeed.py` (a new file; the loop is unchanged).
- `focus`: a FOCUS adapter on a frozen GPT checkpoint (torch DDP over the adapter only): `engines/focus.py`, chosen
  by focus.base_checkpoint (what `nucleotron focus train --checkpoint CKPT` sets), whatever model.arch says.

Contract of a step, as the loop calls it:
    sums = engine.forward_backward(batches, num_microbatches)   # gradients accumulated, not applied
    if the loss is acceptable: updated, grad_norm = engine.optimizer_step()   # applies them, advances the schedule
    else: engine.skip_step()                                                    # drops them
`sums` is this rank's share of the loss sums (see train/loss.py); the loop all-reduces it.
"""
from __future__ import annotations

import importlib
from typing import Dict, Iterator, List, Protocol, Tuple

import torch

from nucleotron.configs import ConfigError, NucleotronConfig
from nucleotron.data_prep.manifest import Manifest

from .loss import LossSums

Batch = Dict[str, torch.Tensor]   # tokens, labels, loss_mask, position_ids: [micro_batch, seq_len] each


class Engine(Protocol):
    """One training engine. All methods are collective: every rank calls them in the same order."""

    name: str

    def init_distributed(self) -> None:
        """Start torch.distributed (gloo on CPU, NCCL on GPUs) and the engine's parallel groups."""

    @property
    def data_parallel(self) -> Tuple[int, int]:
        """(rank, size) of this process among the data-parallel replicas: which slice of each global batch it reads."""

    def seed_offset(self) -> int:
        """Added to run.seed before the model is built: ranks that must draw different numbers (pipeline stages)."""

    def layout(self) -> str:
        """The parallel layout in words, for the start-up line (e.g. "TP 2, PP 1, EP 1, DP 4")."""

    def build(self, manifest: Manifest, total_steps: int) -> None:
        """Model, optimizer and LR schedule for a run of `total_steps` optimizer steps on the pack of `manifest`
        (its vocabulary, EOD id and sequence length)."""

    def forward_backward(self, batches: Iterator[Batch], num_microbatches: int) -> LossSums:
        """Forward and backward of one global batch (this rank's micro-batches); gradients accumulate."""

    def optimizer_step(self) -> Tuple[bool, float]:
        """Apply the accumulated gradients and advance the LR schedule: (updated, gradient norm)."""

    def skip_step(self) -> None:
        """Drop the accumulated gradients (a bad loss); the schedule does not advance."""

    def evaluate(self, batches: List[Batch]) -> LossSums:
        """Forward only over fixed batches, in eval mode; this rank's share of the loss sums."""

    def learning_rate(self) -> float:
        ...

    def schedule_state(self) -> dict:
        """The LR schedule's state as plain JSON data (kept in the checkpoint's nucleotron.json)."""

    def load_schedule_state(self, state: dict) -> None:
        ...

    def save(self, directory: str) -> None:
        """Write model and optimizer state into `directory` (exists; every rank writes its own part)."""

    def load(self, directory: str) -> None:
        """Read what `save` wrote (resharding where the engine can)."""

    def load_weights(self, directory: str) -> None:
        """Read only the model weights of a checkpoint (fine-tuning, conversion): fresh optimizer and schedule."""

    def parameters_finite(self) -> bool:
        """Whether every weight is finite, on every rank (checked before a save and after a non-finite grad norm)."""

    def statistics(self) -> Dict[str, float]:
        """Per-layer numbers for the log (Gengram gates, MoE balance, H-Net compression), same on every rank."""

    def flops_per_token(self, seq_len: int) -> float:
        """Model training FLOPs per token (forward + backward), for MFU."""

    def shutdown(self) -> None:
        """Tear down process groups."""


# model.arch (or "focus") -> "module:Class"; a new engine is a new module and one line here.
ENGINES = {
    "gpt": "nucleotron.train.engines.megatron:MegatronEngine",
    "hnet": "nucleotron.train.engines.deepspeed:DeepSpeedEngine",
    "focus": "nucleotron.train.engines.focus:FocusEngine",
}


def engine_name(cfg: NucleotronConfig) -> str:
    """The registry key: "focus" when the config trains a FOCUS adapter (the config itself says so, so a requeued
    Slurm job running `nucleotron train` on the recorded config picks the same engine), else model.arch."""
    if getattr(getattr(cfg, "focus", None), "base_checkpoint", None):
        return "focus"
    return getattr(cfg.model, "arch", "gpt")


def build_engine(cfg: NucleotronConfig) -> Engine:
    arch = engine_name(cfg)
    if arch not in ENGINES:
        raise ConfigError(f"model.arch={arch!r} has no training engine; choose one of: {', '.join(ENGINES)}")
    module, cls = ENGINES[arch].split(":")
    return getattr(importlib.import_module(module), cls)(cfg)
