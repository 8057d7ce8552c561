"""The learning-rate schedule of the engines that do not use megatron's scheduler object (DeepSpeed, FOCUS)."""
from __future__ import annotations

import math


def cosine_lr(step: int, base: float, minimum: float, warmup: int, decay_end: int) -> float:
    """megatron's OptimizerParamScheduler (init_lr 0, cosine), as a function of completed optimizer steps, so every
    engine follows the same schedule."""
    if warmup > 0 and step <= warmup:
        return base * step / warmup
    if step > decay_end:
        return minimum
    ratio = (step - warmup) / max(1, decay_end - warmup)
    return minimum + 0.5 * (math.cos(math.pi * ratio) + 1.0) * (base - minimum)
