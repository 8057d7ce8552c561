"""Mamba-2's state-space duality (SSD) scan in plain PyTorch, and the GPU kernel behind a guarded import.

`ssd_scan(x, dt, A, B, C, chunk_size)` has the signature of mamba_ssm's `mamba_chunk_scan_combined` (no D, no z):

    h_t = exp(dt_t * A) h_{t-1} + dt_t * B_t x_t^T,    y_t = C_t h_t

computed chunk-wise: quadratic (attention-like) inside a chunk, a linear recurrence over chunk states. The torch path
runs everywhere and is the reference; on CUDA tensors the Triton kernel is used when mamba_ssm imports.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

try:  # optional GPU kernels (the `gpu` extra): no wheels, so never required
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as _ssd_kernel
except Exception:  # ImportError, or a broken CUDA build
    _ssd_kernel = None


def segment_sums(a: torch.Tensor) -> torch.Tensor:
    """[..., T] -> [..., T, T] with out[i, j] = a[j+1] + ... + a[i] for i >= j and -inf above the diagonal.

    Summing masked copies (rather than differencing a cumulative sum) keeps it exact for long decays."""
    T = a.size(-1)
    rows = a.unsqueeze(-1).expand(*a.shape, T)  # rows[..., i, j] = a[i]
    strictly_lower = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), diagonal=-1)
    sums = torch.cumsum(rows.masked_fill(~strictly_lower, 0), dim=-2)
    lower = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device))
    return sums.masked_fill(~lower, float("-inf"))


def ssd_reference(x, dt, A, B, C, chunk_size: int, initial_state: Optional[torch.Tensor] = None
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD in torch. x [b, l, h, p], dt [b, l, h], A [h], B and C [b, l, g, n] (g divides h).

    Returns (y [b, l, h, p], final state [b, h, p, n]). L is padded to a multiple of chunk_size with dt = 0 (no decay,
    no input), which leaves every real position and the final state unchanged."""
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    pad = (-l) % chunk_size
    if pad:
        x, dt = F.pad(x, (0, 0, 0, 0, 0, pad)), F.pad(dt, (0, 0, 0, pad))
        B, C = F.pad(B, (0, 0, 0, 0, 0, pad)), F.pad(C, (0, 0, 0, 0, 0, pad))
    B = B.repeat_interleave(h // g, dim=2)
    C = C.repeat_interleave(h // g, dim=2)
    c = x.shape[1] // chunk_size
    X = (x * dt.unsqueeze(-1)).reshape(b, c, chunk_size, h, p)
    logdecay = (dt * A).reshape(b, c, chunk_size, h).permute(0, 3, 1, 2)  # [b, h, c, q]
    B = B.reshape(b, c, chunk_size, h, n)
    C = C.reshape(b, c, chunk_size, h, n)
    cum = torch.cumsum(logdecay, dim=-1)

    # inside each chunk: y_i = sum_{j<=i} C_i.B_j exp(sum_{j<k<=i} a_k) X_j
    decay_in = torch.exp(segment_sums(logdecay))  # [b, h, c, q, q]
    y = torch.einsum("bcihn,bcjhn,bhcij,bcjhp->bcihp", C, B, decay_in, X)

    # each chunk's end state from its own inputs, then the recurrence over chunks
    decay_to_end = torch.exp(cum[..., -1:] - cum)  # [b, h, c, q]
    states = torch.einsum("bcjhn,bhcj,bcjhp->bchpn", B, decay_to_end, X)
    if initial_state is None:
        initial_state = torch.zeros_like(states[:, :1])
    else:
        initial_state = initial_state.unsqueeze(1).to(states.dtype)
    states = torch.cat([initial_state, states], dim=1)  # [b, c+1, h, p, n]
    decay_chunks = torch.exp(segment_sums(F.pad(cum[..., -1], (1, 0))))  # [b, h, c+1, c+1]
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunks, states)
    states, final = states[:, :-1], states[:, -1]

    # contribution of the state entering each chunk
    y = y + torch.einsum("bcihn,bchpn,bhci->bcihp", C, states, torch.exp(cum))
    y = y.reshape(b, c * chunk_size, h, p)[:, :l]
    return y, final


def ssd_scan(x, dt, A, B, C, chunk_size: int, initial_state: Optional[torch.Tensor] = None):
    """SSD through the Triton kernel on CUDA when mamba_ssm imports, else through `ssd_reference`."""
    if _ssd_kernel is not None and x.is_cuda:
        y, final = _ssd_kernel(x, dt, A, B, C, chunk_size=chunk_size, initial_states=initial_state,
                               return_final_states=True)
        return y, final
    return ssd_reference(x, dt, A, B, C, chunk_size, initial_state)


def kernels_available() -> bool:
    return _ssd_kernel is not None
