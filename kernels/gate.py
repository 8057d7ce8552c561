"""Gengram's gate and short convolution as two elementwise-fusable functions (spec section 3).

    gated_value: u = sigmoid(signed_sqrt(<RMSNorm_q(h), RMSNorm_k(key)> / sqrt(H))) * value
    conv_residual: h + u + SiLU(causal dilated depthwise conv(u))
Written as plain tensor expressions (the conv as a sum of shifted copies, not a Conv1d call) so torch.compile can
fuse each into one pass over [s, b, H] on a GPU (`fused`); on CPU they run as they are. The split between the two is
where sequence parallelism fetches the conv's halo of u from the previous rank.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

RMSNORM_EPS = 1e-5  # of both gate RMSNorms (nn.RMSNorm modules in model/gengram.py)
GATE_FLOOR = 1e-6  # signed sqrt: sign(g) * sqrt(max(|g|, GATE_FLOOR))


def gated_value(hidden: torch.Tensor, key: torch.Tensor, value: torch.Tensor, norm_q: nn.Module,
                norm_k: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """(u = alpha * value, alpha [s, b, 1]) from h, key and value [s, b, H] and the two RMSNorm modules (called as
    modules, so forward hooks on them, e.g. infer/analyze.py's, still see their outputs)."""
    gate = (norm_q(hidden) * norm_k(key)).sum(dim=-1, keepdim=True) / math.sqrt(hidden.shape[-1])
    gate = torch.sign(gate) * torch.sqrt(gate.abs().clamp(min=GATE_FLOOR))
    alpha = torch.sigmoid(gate)
    return alpha * value, alpha


def conv_residual(hidden: torch.Tensor, u: torch.Tensor, weight: torch.Tensor, dilation: int,
                  before: Optional[torch.Tensor] = None) -> torch.Tensor:
    """h + u + SiLU(conv(u)): conv(u)[t] = sum_i weight[:, i] * u[t - (k-1-i) * dilation] (depthwise, causal).

    weight: the Conv1d weight [H, 1, k]. before: the (k-1)*dilation positions of u preceding this slice (sequence
    parallelism), zeros when None.
    """
    kernel = weight.shape[-1]
    reach = (kernel - 1) * dilation
    taps = weight[:, 0].to(u.dtype)  # [H, k]
    if before is None:
        before = u.new_zeros(reach, *u.shape[1:])
    padded = torch.cat([before, u])  # [reach + s, b, H]
    length = u.shape[0]
    conv = padded[reach:] * taps[:, kernel - 1]
    for i in range(kernel - 1):
        start = i * dilation
        conv = conv + padded[start:start + length] * taps[:, i]
    return hidden + u + F.silu(conv)


@functools.lru_cache(maxsize=None)
def _compiled(fn: Callable) -> Callable:
    return torch.compile(fn, dynamic=False)


def fused(fn: Callable, on_gpu: bool) -> Callable:
    """`fn` compiled into fused kernels on a GPU (compiled once per process), as it is elsewhere."""
    return _compiled(fn) if on_gpu else fn
