"""Model FLOPs utilisation: achieved model FLOP/s per device over the device's peak.

Model FLOPs per token come from the architecture (`nucleotron.model.flops`), so MFU does not count recompute.
"""
from __future__ import annotations

from typing import Optional

import torch

# Dense bf16 tensor-core peaks in TFLOP/s (vendor datasheets, without sparsity).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "B200": 2250.0, "GH200": 989.0}


def peak_tflops(configured: Optional[float]) -> Optional[float]:
    """The configured peak, else a known GPU's bf16 peak, else None (MFU is then not reported)."""
    if configured is not None:
        return float(configured)
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_BF16_TFLOPS[key]
    return None


def mfu(flops_per_token: float, tokens_per_s_per_device: float, peak: Optional[float]) -> Optional[float]:
    if peak is None:
        return None
    return flops_per_token * tokens_per_s_per_device / (peak * 1e12)
