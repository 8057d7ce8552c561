"""Dynamic chunking: the routing module, the chunk (downsample) and dechunk (EMA smooth + upsample) layers, the
confidence straight-through estimator and the ratio loss (H-Net, Hwang, Wang & Gu 2025, section 2.2).

Padded mode works on [b, l, d] with a validity mask (right padding); packed mode on [t, d] with cu_seqlens. Both give
the same values; the model uses padded mode, packed mode serves variable-length inputs without padding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ssd import ssd_scan

P_CLAMP = 1e-4  # the EMA's boundary probabilities live in [1e-4, 1 - 1e-4]: dt = -log(1 - p) stays finite


@dataclass
class RouterOutput:
    """Per position of one stage: boundary probability p, boundary b (p > 0.5, never on padding), confidence
    c = max(p, 1 - p), and the validity mask of the positions."""

    prob: torch.Tensor        # [b, l] float
    boundary: torch.Tensor    # [b, l] bool
    confidence: torch.Tensor  # [b, l] float
    mask: torch.Tensor        # [b, l] bool


@dataclass
class RouterState:
    last: Optional[torch.Tensor] = None  # [b, d]: the previous position's hidden state (None before the first)


class RoutingModule(nn.Module):
    """p_t = (1 - cos(W_q x_{t-1}, W_k x_t)) / 2 and p_1 = 1; W_q and W_k start as the identity."""

    def __init__(self, d_model: int):
        super().__init__()
        self.q_proj_layer = nn.Linear(d_model, d_model, bias=False)
        self.k_proj_layer = nn.Linear(d_model, d_model, bias=False)
        with torch.no_grad():
            self.q_proj_layer.weight.copy_(torch.eye(d_model))
            self.k_proj_layer.weight.copy_(torch.eye(d_model))
        self.q_proj_layer.weight._no_reinit = True
        self.k_proj_layer.weight._no_reinit = True

    def _prob(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        q = F.normalize(self.q_proj_layer(previous).float(), dim=-1)
        k = F.normalize(self.k_proj_layer(current).float(), dim=-1)
        return ((1 - (q * k).sum(-1)) / 2).clamp(0.0, 1.0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> RouterOutput:
        p = F.pad(self._prob(x[:, :-1], x[:, 1:]), (1, 0), value=1.0)
        return _router_output(p, mask)

    def forward_packed(self, x: torch.Tensor, cu_seqlens: torch.Tensor) -> RouterOutput:
        """x [t, d] holding sequences cu_seqlens[i]:cu_seqlens[i+1]; every sequence start gets p = 1."""
        p = F.pad(self._prob(x[:-1], x[1:]), (1, 0), value=1.0)
        starts = torch.zeros_like(p, dtype=torch.bool)
        starts[cu_seqlens[:-1].long()] = True
        p = torch.where(starts, torch.ones_like(p), p)
        return _router_output(p, torch.ones_like(starts))

    def step(self, x: torch.Tensor, state: RouterState) -> RouterOutput:
        """x [b, 1, d] -> the router output of this one position."""
        current = x[:, 0]
        if state.last is None:
            p = torch.ones(x.shape[0], device=x.device)
        else:
            p = self._prob(state.last, current)
        state.last = current
        return _router_output(p.unsqueeze(1), torch.ones_like(p, dtype=torch.bool).unsqueeze(1))


def _router_output(p: torch.Tensor, mask: torch.Tensor) -> RouterOutput:
    boundary = (p > 0.5) & mask
    return RouterOutput(prob=p, boundary=boundary, confidence=torch.maximum(p, 1 - p), mask=mask)


# ------------------------------------------------------------------------------------------ chunk / dechunk


def boundary_order(boundary: torch.Tensor) -> torch.Tensor:
    """[b, l] -> indices [b, l] that list each row's boundary positions first, in order (keys t + l * (1 - b_t))."""
    L = boundary.shape[1]
    keys = torch.arange(L, device=boundary.device) + (~boundary).long() * L
    return torch.argsort(keys, dim=1)


def chunk(x: torch.Tensor, boundary: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Padded mode: the boundary rows of x [b, l, d] in order -> ([b, m, d], mask [b, m]) with m = max boundaries."""
    counts = boundary.sum(-1)
    m = int(counts.max())
    index = boundary_order(boundary)[:, :m]
    chunks = torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return chunks, torch.arange(m, device=x.device)[None, :] < counts[:, None]


def chunk_packed(x: torch.Tensor, boundary: torch.Tensor, cu_seqlens: torch.Tensor):
    """Packed mode: x [t, d] -> (x[boundary] [t', d], cu_seqlens of the chunk sequences)."""
    counts = torch.cumsum(boundary.long(), 0)
    ends = counts[cu_seqlens[1:].long() - 1]
    return x[boundary], F.pad(ends, (1, 0)).to(cu_seqlens.dtype)


def ema(z: torch.Tensor, p: torch.Tensor, chunk_size: int = 256) -> torch.Tensor:
    """zbar_j = p_j z_j + (1 - p_j) zbar_{j-1} over [b, m, d], zbar_0 from a zero state, as an SSD scan:
    dt = -log(1 - p), x = z / dt, A = -1, B = p, C = 1 (one head of width d, state size 1)."""
    p = p.float().clamp(P_CLAMP, 1 - P_CLAMP)
    dt = -torch.log1p(-p)
    x = (z.float() / dt.unsqueeze(-1)).unsqueeze(2)  # [b, m, 1, d]
    A = -torch.ones(1, device=z.device)
    ones = torch.ones_like(p)[..., None, None]
    y, _ = ssd_scan(x, dt.unsqueeze(-1), A, p[..., None, None], ones, chunk_size)
    return y.squeeze(2).to(z.dtype)


def dechunk(z: torch.Tensor, boundary: torch.Tensor, prob: torch.Tensor, chunk_size: int = 256) -> torch.Tensor:
    """Padded mode: smooth the main network's outputs z [b, m, d] with the EMA of the boundaries' probabilities, then
    give each position t of [b, l] the value of the last chunk that started at or before t (causal upsampling)."""
    m = z.shape[1]
    p = torch.gather(prob, 1, boundary_order(boundary)[:, :m])
    smoothed = ema(z, p, chunk_size)
    source = (torch.cumsum(boundary.long(), 1) - 1).clamp(min=0)
    return torch.gather(smoothed, 1, source.unsqueeze(-1).expand(-1, -1, z.shape[-1]))


def dechunk_packed(z: torch.Tensor, boundary: torch.Tensor, prob: torch.Tensor, chunk_cu_seqlens: torch.Tensor,
                   chunk_size: int = 256) -> torch.Tensor:
    """Packed mode of `dechunk`: z [t', d] over the chunk sequences, back to [t, d]; each sequence's EMA starts from
    a zero state, as in padded mode."""
    p = prob[boundary]
    bounds = chunk_cu_seqlens.tolist()
    smoothed = torch.cat([ema(z[None, a:b], p[None, a:b], chunk_size)[0] for a, b in zip(bounds[:-1], bounds[1:])])
    return smoothed[torch.cumsum(boundary.long(), 0) - 1]


def dechunk_step(z: Optional[torch.Tensor], router: RouterOutput, last: torch.Tensor) -> torch.Tensor:
    """One position: a boundary (z = the main network's output for it, [b, 1, d]) updates the EMA; any other position
    keeps the last value. `last` [b, 1, d] is updated in place and returned."""
    if z is not None:
        p = router.prob.float().clamp(P_CLAMP, 1 - P_CLAMP).unsqueeze(-1)
        last.copy_(p * z.float() + (1 - p) * last)
    return last


# ------------------------------------------------------------------------------------------ STE and ratio loss


class _ConfidenceSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, confidence):
        return torch.ones_like(confidence)

    @staticmethod
    def backward(ctx, grad):
        return grad


def confidence_ste(confidence: torch.Tensor) -> torch.Tensor:
    """1 in the forward pass, the identity in the backward pass: the decoder input's value is unchanged, and the
    router learns through the gradient that reaches c_t."""
    return _ConfidenceSTE.apply(confidence)


def ratio_loss(router: RouterOutput, target: float) -> torch.Tensor:
    """N/(N-1) [(N-1) F G + (1-F)(1-G)] with F the fraction of valid positions selected and G their mean boundary
    probability: 1 at F = G = 1/N; its gradient pushes G down when F > 1/N and up when F < 1/N (F has none)."""
    mask = router.mask.float()
    count = mask.sum().clamp(min=1.0)
    selected = (router.boundary.float() * mask).sum() / count
    mean_prob = (router.prob * mask).sum() / count
    n = float(target)
    return n / (n - 1) * ((n - 1) * selected * mean_prob + (1 - selected) * (1 - mean_prob))
