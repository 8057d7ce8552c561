"""Mamba-2 mixer with mamba_ssm's parameter names (in_proj, conv1d, dt_bias, A_log, D, norm, out_proj).

Three paths over one set of weights: the chunked SSD in torch (any device; the reference), the mamba_ssm /
causal-conv1d kernels on CUDA when they import, and `step` (one token, constant-size state) for decoding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ssd import ssd_scan

try:  # optional GPU kernel for the depthwise causal convolution
    from causal_conv1d import causal_conv1d_fn as _conv_kernel
except Exception:
    _conv_kernel = None


class GatedRMSNorm(nn.Module):
    """RMSNorm(y * silu(z)) * weight: mamba_ssm's RMSNormGated with norm_before_gate=False, one group."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = (y * F.silu(z)).float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(z.dtype)


@dataclass
class Mamba2State:
    conv: torch.Tensor  # [b, conv_dim, d_conv]: the last d_conv inputs of the convolution
    ssm: torch.Tensor   # [b, heads, headdim, d_state]


class Mamba2(nn.Module):
    def __init__(self, d_model: int, d_state: int = 128, d_conv: int = 4, expand: int = 2, headdim: int = 64,
                 ngroups: int = 1, chunk_size: int = 256, dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, A_init_range=(1.0, 16.0)):
        super().__init__()
        self.d_inner = expand * d_model
        if self.d_inner % headdim:
            raise ValueError(f"Mamba-2: expand*d_model={self.d_inner} is not divisible by headdim={headdim}")
        self.d_state, self.d_conv, self.headdim, self.ngroups, self.chunk_size = d_state, d_conv, headdim, ngroups, chunk_size
        self.nheads = self.d_inner // headdim
        self.conv_dim = self.d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * ngroups * d_state + self.nheads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, padding=d_conv - 1)
        # dt log-uniform in [dt_min, dt_max]; dt_bias is its inverse softplus, so softplus(dt_bias) = dt at init
        dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(*A_init_range)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.norm = GatedRMSNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def _split(self, zxbcdt: torch.Tensor):
        return torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads], dim=-1)

    def _heads(self, xBC: torch.Tensor):
        x, B, C = torch.split(xBC, [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        shape = xBC.shape[:-1]
        return (x.reshape(*shape, self.nheads, self.headdim), B.reshape(*shape, self.ngroups, self.d_state),
                C.reshape(*shape, self.ngroups, self.d_state))

    def forward(self, u: torch.Tensor, return_state: bool = False):
        """u [b, l, d_model] -> [b, l, d_model] (and the decoding state after the last position)."""
        L = u.shape[1]
        z, xBC, dt = self._split(self.in_proj(u))
        conv_in = xBC.transpose(1, 2)
        if _conv_kernel is not None and u.is_cuda:
            xBC = _conv_kernel(conv_in, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu")
        else:
            xBC = F.silu(self.conv1d(conv_in)[..., :L])
        xBC = xBC.transpose(1, 2)
        x, B, C = self._heads(xBC)
        dt = F.softplus(dt.float() + self.dt_bias.float())
        A = -torch.exp(self.A_log.float())
        y, final = ssd_scan(x, dt.to(x.dtype), A, B, C, self.chunk_size)
        y = y + x * self.D.to(x.dtype).unsqueeze(-1)
        out = self.out_proj(self.norm(y.reshape(*y.shape[:2], self.d_inner), z))
        if not return_state:
            return out
        conv = F.pad(conv_in, (max(self.d_conv - L, 0), 0))[..., -self.d_conv:]
        return out, Mamba2State(conv=conv.contiguous(), ssm=final.float())

    def empty_state(self, batch: int, device, dtype=torch.float32) -> Mamba2State:
        return Mamba2State(conv=torch.zeros(batch, self.conv_dim, self.d_conv, device=device, dtype=dtype),
                           ssm=torch.zeros(batch, self.nheads, self.headdim, self.d_state, device=device,
                                           dtype=torch.float32))

    def step(self, u: torch.Tensor, state: Mamba2State) -> torch.Tensor:
        """One position: u [b, 1, d_model] -> [b, 1, d_model]; `state` is updated in place."""
        z, xBC, dt = self._split(self.in_proj(u[:, 0]))
        state.conv.copy_(torch.roll(state.conv, shifts=-1, dims=-1))
        state.conv[..., -1] = xBC
        xBC = F.silu((state.conv * self.conv1d.weight.squeeze(1)).sum(-1) + self.conv1d.bias)
        x, B, C = self._heads(xBC)
        B = B.repeat_interleave(self.nheads // self.ngroups, dim=1).float()
        C = C.repeat_interleave(self.nheads // self.ngroups, dim=1).float()
        dt = F.softplus(dt.float() + self.dt_bias.float())  # [b, h]
        decay = torch.exp(dt * -torch.exp(self.A_log.float()))
        state.ssm.mul_(decay[..., None, None]).add_(torch.einsum("bh,bhn,bhp->bhpn", dt, B, x.float()))
        y = torch.einsum("bhpn,bhn->bhp", state.ssm, C) + self.D.float().unsqueeze(-1) * x.float()
        y = y.to(u.dtype).reshape(u.shape[0], self.d_inner)
        return self.out_proj(self.norm(y, z)).unsqueeze(1)
