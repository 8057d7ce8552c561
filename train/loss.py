"""Loss accounting shared by every engine: per-token losses of one micro-batch -> the sums a report needs.

Every engine returns its rank's share of a `LossSums`; the loop all-reduces it over the world, so an engine counts a
token on exactly one rank (megatron: the last pipeline stage, tensor-parallel rank 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Tuple

import torch
import torch.distributed as dist


@dataclass
class LossSums:
    """Unweighted sums over counted targets (`loss`, `tokens`) and over base targets, EOD excluded (`base_loss`,
    `bases`), so reported losses compare across soft-mask weightings and bits per base excludes document ends."""

    loss: float = 0.0
    tokens: float = 0.0
    base_loss: float = 0.0
    bases: float = 0.0

    def __add__(self, other: "LossSums") -> "LossSums":
        return LossSums(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple())))

    def as_tuple(self) -> Tuple[float, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))

    @classmethod
    def from_tensor(cls, tensor: torch.Tensor) -> "LossSums":
        return cls(*tensor.double().cpu().tolist())

    def all_reduced(self, device: torch.device) -> "LossSums":
        """The sum over every rank (a collective when torch.distributed runs with more than one process)."""
        tensor = torch.tensor(self.as_tuple(), dtype=torch.float64, device=device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(tensor)
        return LossSums.from_tensor(tensor)

    @property
    def mean_loss(self) -> float:
        return self.loss / self.tokens if self.tokens else float("nan")

    @property
    def bits_per_base(self) -> float:
        return self.base_loss / self.bases / math.log(2) if self.bases else float("nan")


def token_loss(per_token_loss: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor, eod: int):
    """(weighted loss sum, counted-token count, LossSums as a detached tensor) of one micro-batch.

    `loss_mask` may hold weights below 1 (down-weighted soft-masked bases): the gradient then follows the weighted
    mean sum(w*l)/sum(w), scaled so that a division by the integer count (megatron's schedule divides by it) gives
    it. With a 0/1 mask the scale is exactly 1.0 and the sum is the plain sum.
    """
    losses = per_token_loss.float()
    weights = loss_mask.float()
    mask = (weights > 0).float()
    base = mask * (labels != eod).float()
    count = mask.sum()
    total = (losses * weights).sum() * (count / weights.sum().clamp(min=1e-12))
    sums = torch.stack([(losses * mask).sum().detach(), count, (losses * base).sum().detach(), base.sum()])
    return total, count, sums
