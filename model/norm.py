"""The RMSNorm every norm of the decoder uses: torch's, made usable under sequence parallelism.

megatron-core's local spec wraps torch.nn.RMSNorm (WrappedTorchNorm) and refuses sequence parallelism, because
under it each tensor-parallel rank normalises only its own slice of the sequence, so the weight's gradient is a
partial sum that nothing all-reduces. Marking the weight `sequence_parallel` is how megatron's
finalize_model_grads knows to sum it over the tensor-parallel group (its TE and Apex norms do the same).
"""
from __future__ import annotations

import torch


class RMSNorm(torch.nn.RMSNorm):
    """torch.nn.RMSNorm with megatron's norm constructor (config, hidden_size, eps)."""

    def __init__(self, config, hidden_size: int, eps: float = 1e-5):
        super().__init__(hidden_size, eps=eps)
        self.weight.sequence_parallel = config.sequence_parallel
