"""MoE experts as two grouped GEMMs (torch._grouped_mm) instead of megatron's per-expert Python loop.

`GroupedGemmExperts` is megatron's `SequentialMLP` with the same parameters (`local_experts.<i>.linear_fc1/fc2`), so
state dicts, sharded checkpoint keys, optimizer groups and expert-parallel sharding are unchanged; only the forward
differs. The expert weights are stacked per call ([E, out, in], one copy, a few percent of the GEMM time) and each
GEMM runs over all experts at once. Where `torch._grouped_mm` is missing, rejects the dtype (fp32), or fails a
one-time check on this device, the same math runs as one matmul per expert.
"""
from __future__ import annotations

import functools
import logging
from typing import List, Sequence

import torch
import torch.nn.functional as F
from megatron.core.transformer.moe.experts import SequentialMLP

logger = logging.getLogger(__name__)

# Rows per expert group are padded to this multiple: grouped GEMM kernels need 16-byte aligned group starts in the
# token dimension (the weight-gradient GEMM reduces over tokens); 16 rows covers bf16 and fp16.
GROUP_ALIGN = 16


def _looped_linear(x: torch.Tensor, weights: Sequence[torch.Tensor], counts: List[int]) -> torch.Tensor:
    """Reference and fallback: rows split by expert, one F.linear per expert ([rows, in] x [out, in]^T)."""
    return torch.cat([F.linear(rows, w) for rows, w in zip(x.split(counts), weights)])


def _grouped_linear(x: torch.Tensor, stacked: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """One grouped GEMM: rows offsets[e-1]:offsets[e] of x times stacked[e]^T, for all experts at once."""
    return torch._grouped_mm(x, stacked.transpose(-2, -1), offs=offsets)


@functools.lru_cache(maxsize=None)
def grouped_mm_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch._grouped_mm runs on this device and dtype and matches the per-expert loop, forward and
    backward, with uneven and empty groups (checked once per process on a tiny problem)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    counts = [GROUP_ALIGN, 0, 2 * GROUP_ALIGN]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(sum(counts), 32, generator=generator).to(device, dtype)
    w = torch.randn(len(counts), 16, 32, generator=generator).to(device, dtype)
    grad = torch.randn(sum(counts), 16, generator=generator).to(device, dtype)
    offsets = torch.tensor(counts, device=device).cumsum(0).to(torch.int32)
    results = []
    try:  # the first forward may run under no_grad (validation) or autocast: the check needs neither
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            for grouped in (True, False):
                xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
                out = _grouped_linear(xi, wi, offsets) if grouped else _looped_linear(xi, list(wi), counts)
                out.backward(grad)
                results.append((out.detach().float(), xi.grad.float(), wi.grad.float()))
    except (RuntimeError, NotImplementedError) as err:
        logger.info("torch._grouped_mm unavailable for %s on %s (%s); experts use one matmul each", dtype, device,
                    str(err).splitlines()[0])
        return False
    tolerance = 1e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-4
    same = all(torch.allclose(a, b, rtol=tolerance, atol=tolerance * 32) for a, b in zip(*results))
    if not same:
        logger.warning("torch._grouped_mm disagrees with per-expert matmuls for %s on %s; not using it", dtype, device)
    return same


class GroupedGemmExperts(SequentialMLP):
    """SequentialMLP's experts and weights, computed as grouped GEMMs: fc1 -> SwiGLU x routing prob -> fc2."""

    def __init__(self, num_local_experts, config, submodules, pg_collection=None):
        super().__init__(num_local_experts, config, submodules, pg_collection=pg_collection)
        unsupported = {
            "add_bias_linear": config.add_bias_linear,
            "gated_linear_unit=False": not config.gated_linear_unit,
            "activation_func other than silu": config.activation_func is not F.silu,
            "fp8/fp4": bool(config.fp8 or config.fp4),
            "moe_apply_probs_on_input": config.moe_apply_probs_on_input,
            "gradient_accumulation_fusion": config.gradient_accumulation_fusion,
            "bias_activation_fusion": config.bias_activation_fusion,
            "activation_func_clamp_value": config.activation_func_clamp_value is not None,
            "glu_linear_offset": bool(config.glu_linear_offset),
        }
        bad = [name for name, on in unsupported.items() if on]
        if bad:
            raise NotImplementedError(f"GroupedGemmExperts computes bias-free SwiGLU experts only; this config has "
                                      f"{', '.join(bad)} (use model.te=on with TransformerEngine)")

    def forward(self, permuted_local_hidden_states: torch.Tensor, tokens_per_expert: torch.Tensor,
                permuted_probs: torch.Tensor):
        x, probs = permuted_local_hidden_states, permuted_probs
        counts = [int(c) for c in tokens_per_expert.tolist()]  # SequentialMLP and TEGroupedMLP sync here too
        fc1 = [expert.linear_fc1.weight for expert in self.local_experts]
        fc2 = [expert.linear_fc2.weight for expert in self.local_experts]
        if x.shape[0] == 0 or not grouped_mm_works(x.device, x.dtype):
            hidden = self._activation(_looped_linear(x, fc1, counts), probs)
            return _looped_linear(hidden, fc2, counts), None
        padded = [-(-c // GROUP_ALIGN) * GROUP_ALIGN for c in counts]
        rows = None
        if padded != counts:  # scatter each expert's rows to an aligned start; padding rows are zero
            starts = torch.tensor([0, *padded[:-1]]).cumsum(0) - torch.tensor([0, *counts[:-1]]).cumsum(0)
            rows = torch.arange(x.shape[0], device=x.device) + torch.repeat_interleave(
                starts, torch.tensor(counts), output_size=x.shape[0]).to(x.device)
            x = x.new_zeros(sum(padded), x.shape[1]).index_copy(0, rows, x)
            probs = probs.new_zeros(sum(padded)).index_copy(0, rows, probs)
        offsets = torch.tensor(padded, device=x.device).cumsum(0).to(torch.int32)
        hidden = self._activation(_grouped_linear(x, torch.stack(fc1), offsets), probs)
        out = _grouped_linear(hidden, torch.stack(fc2), offsets)
        return (out if rows is None else out.index_select(0, rows)), None

    @staticmethod
    def _activation(fc1_out: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """SwiGLU, then the routing probability, in the order and dtypes megatron's expert MLP uses."""
        gate, up = torch.chunk(fc1_out, 2, dim=-1)
        hidden = F.silu(gate) * up
        return (hidden * probs.unsqueeze(-1)).to(hidden.dtype)
