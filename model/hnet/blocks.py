"""Pre-norm blocks and the isotropic stacks they form (H-Net's `Isotropic`): each block adds its mixer (Mamba-2 or
attention) and, for upper-case letters, a SwiGLU MLP to an fp32 residual stream; every stack ends in an RMSNorm.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import CausalSelfAttention, KVCache
from .layout import BlockSpec
from .mamba2 import Mamba2


class SwiGLU(nn.Module):
    """fc2(silu(gate) * up) with fc1 producing [up, gate] (mamba_ssm GatedMLP's layout)."""

    def __init__(self, d_model: int, d_intermediate: int):
        super().__init__()
        self.fc1 = nn.Linear(d_model, 2 * d_intermediate, bias=False)
        self.fc2 = nn.Linear(d_intermediate, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(up * F.silu(gate))


class Block(nn.Module):
    def __init__(self, spec: BlockSpec, d_model: int, d_intermediate: int, mixer: nn.Module, eps: float = 1e-5):
        super().__init__()
        self.spec = spec
        self.norm = nn.RMSNorm(d_model, eps=eps)
        self.mixer = mixer
        if spec.mlp:
            if d_intermediate < 1:
                raise ValueError("an upper-case block (with MLP) needs model.hnet.d_intermediate > 0 in its stage")
            self.norm2 = nn.RMSNorm(d_model, eps=eps)
            self.mlp = SwiGLU(d_model, d_intermediate)

    @property
    def residual_adds(self) -> int:
        return 2 if self.spec.mlp else 1

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.mixer(self.norm(h)).float()
        if self.spec.mlp:
            h = h + self.mlp(self.norm2(h)).float()
        return h

    def step(self, h: torch.Tensor, state) -> torch.Tensor:
        h = h + self.mixer.step(self.norm(h), state).float()
        if self.spec.mlp:
            h = h + self.mlp(self.norm2(h)).float()
        return h


class Isotropic(nn.Module):
    """A flat stack of blocks at one width, ended by `rmsnorm`; input and output [b, l, d]."""

    def __init__(self, specs: List[BlockSpec], d_model: int, d_intermediate: int, num_heads: int, rotary_dim: int,
                 window: int, ssm: dict, eps: float = 1e-5):
        super().__init__()
        layers = []
        for spec in specs:
            if spec.mixer == "mamba2":
                mixer = Mamba2(d_model, **ssm)
            else:
                mixer = CausalSelfAttention(d_model, num_heads, rotary_dim, window)
            layers.append(Block(spec, d_model, d_intermediate, mixer, eps))
        self.layers = nn.ModuleList(layers)
        self.rmsnorm = nn.RMSNorm(d_model, eps=eps)

    @property
    def height(self) -> int:
        """Residual additions in this stack (for the 1/sqrt scaling of output projections at init)."""
        return sum(layer.residual_adds for layer in self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        for layer in self.layers:
            h = layer(h)
        return self.rmsnorm(h).to(x.dtype)

    def empty_state(self, batch: int, device) -> list:
        return [layer.mixer.empty_state(batch, device) if layer.spec.mixer == "mamba2" else KVCache()
                for layer in self.layers]

    def step(self, x: torch.Tensor, states: list) -> torch.Tensor:
        h = x.float()
        for layer, state in zip(self.layers, states):
            h = layer.step(h, state)
        return self.rmsnorm(h).to(x.dtype)
