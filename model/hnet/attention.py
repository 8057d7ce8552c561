"""Causal multi-head attention with partial RoPE and an optional sliding window (flash-attn's window semantics:
window w lets position i see keys i-w..i; w = -1 is full causal attention). Names follow H-Net's CausalMHA
(`Wqkv`, `out_proj`). `step` decodes one position against a KV cache.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # optional GPU kernel
    from flash_attn import flash_attn_func as _flash_attn
except Exception:
    _flash_attn = None


def rope_tables(positions: torch.Tensor, rotary_dim: int, base: float):
    """cos/sin [..., rotary_dim / 2] for integer positions."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, device=positions.device, dtype=torch.float32) / rotary_dim))
    angles = positions.float().unsqueeze(-1) * inv_freq
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first rotary_dim channels of x [b, l, h, d] in halves (non-interleaved, as flash-attn's default)."""
    r = cos.shape[-1] * 2
    rot, rest = x[..., :r].float(), x[..., r:]
    x1, x2 = rot.chunk(2, dim=-1)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
    return torch.cat([rotated, rest], dim=-1)


@dataclass
class KVCache:
    keys: list = field(default_factory=list)    # [b, 1, h, d] per kept position (at most window + 1 of them)
    values: list = field(default_factory=list)
    position: int = 0                            # positions seen so far (the RoPE index of the next one)


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, rotary_dim: int, window: int = -1, rope_base: float = 10000.0):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"attention: d_model={d_model} is not divisible by num_heads={num_heads}")
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        if rotary_dim % 2 or rotary_dim > self.head_dim:
            raise ValueError(f"attention: rotary_dim={rotary_dim} must be even and at most the head dim {self.head_dim}")
        self.rotary_dim, self.window, self.rope_base = rotary_dim, window, rope_base
        self.Wqkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def _qkv(self, x: torch.Tensor, positions: torch.Tensor):
        b, l, _ = x.shape
        q, k, v = self.Wqkv(x).view(b, l, 3, self.num_heads, self.head_dim).unbind(2)
        if self.rotary_dim:
            cos, sin = rope_tables(positions, self.rotary_dim, self.rope_base)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, l, d = x.shape
        q, k, v = self._qkv(x, torch.arange(l, device=x.device))
        if _flash_attn is not None and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16):
            out = _flash_attn(q, k, v, causal=True, window_size=(self.window, 0))
        else:
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            if self.window < 0 or self.window >= l - 1:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                i = torch.arange(l, device=x.device)
                visible = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] <= self.window)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)
            out = out.transpose(1, 2)
        return self.out_proj(out.reshape(b, l, d))

    def step(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """x [b, 1, d]: attend to the cached keys (within the window) and this position's own."""
        b, _, d = x.shape
        q, k, v = self._qkv(x, torch.tensor([cache.position], device=x.device))
        cache.position += 1
        cache.keys.append(k)
        cache.values.append(v)
        if 0 <= self.window < len(cache.keys) - 1:  # slid out of the window: never visible again
            cache.keys.pop(0)
            cache.values.pop(0)
        keys = torch.cat(cache.keys, dim=1).transpose(1, 2)
        values = torch.cat(cache.values, dim=1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values)
        return self.out_proj(out.transpose(1, 2).reshape(b, 1, d))
