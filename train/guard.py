"""The bad-loss policy: a NaN/inf loss or a spike skips the update (or stops the run), and a run whose weights went
non-finite, or that skips step after step, stops with a non-zero status instead of saving NaN checkpoints."""
from __future__ import annotations

import math
from typing import Optional

from .log import logger

SPIKE_WINDOW = 20


class BadLossError(RuntimeError):
    """The run cannot go on: a bad loss with `train.bad_loss=stop`, too many skipped steps, non-finite weights."""


class LossGuard:
    def __init__(self, policy: str, spike_factor: Optional[float], max_consecutive_skips: int, state):
        self.policy, self.spike_factor, self.max_consecutive_skips = policy, spike_factor, max_consecutive_skips
        self.state = state   # the TrainerState: its loss window and skip counters are checkpointed

    def problem(self, loss: float) -> Optional[str]:
        if not math.isfinite(loss):
            return f"loss is {loss}"
        recent = self.state.recent_losses
        if self.spike_factor is not None and len(recent) >= SPIKE_WINDOW // 2:
            mean = sum(recent) / len(recent)
            if loss > self.spike_factor * mean:
                return f"loss {loss:.4f} is above {self.spike_factor} x the recent mean {mean:.4f}"
        return None

    def accept(self, loss: float, step: int, ckpt_root: str) -> bool:
        """True: apply this step's update. False: skip it (counted). Raises when the run must stop."""
        problem = self.problem(loss)
        state = self.state
        if problem is None:
            state.recent_losses = (state.recent_losses + [loss])[-SPIKE_WINDOW:]
            state.consecutive_skips = 0
            return True
        if self.policy == "stop":
            raise BadLossError(f"step {step}: {problem}; stopping (train.bad_loss=stop). The last checkpoint is in "
                               f"{ckpt_root}; resume with train.bad_loss=skip to skip such steps")
        state.skipped_steps += 1
        state.consecutive_skips += 1
        logger.info(f"step {step}: {problem}; skipping the update ({state.skipped_steps} skipped)")
        if state.consecutive_skips >= self.max_consecutive_skips:
            raise BadLossError(
                f"step {step}: {state.consecutive_skips} consecutive steps skipped (train.max_consecutive_skips="
                f"{self.max_consecutive_skips}); the model or the data is broken, stopping. The last checkpoint in "
                f"{ckpt_root} was saved before; resume from it with a lower optim.lr, or check the pack with "
                f"`nucleotron data verify`")
        return False

    def check_weights(self, engine, grad_norm: float, step: int, ckpt_root: str, saving: bool = False) -> None:
        """After a non-finite gradient norm, and before every save: stop if any weight is NaN/inf, so a non-finite
        model is never saved (let alone named `latest`)."""
        if math.isfinite(grad_norm) and not saving:
            return
        if engine.parameters_finite():
            return
        raise BadLossError(
            f"step {step}: the model's weights are no longer finite (gradient norm {grad_norm}); stopping without "
            f"saving them. The last good checkpoint is in {ckpt_root}: resume from it with a lower optim.lr or "
            f"optim.clip_grad")
