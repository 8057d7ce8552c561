"""Fidelity of a compressed model's next-token distributions to the uncompressed model's (FOCUS paper section 4).

Both distributions are clipped at 1e-12 and renormalised before every measure, as in the paper.
    L1 = sum |p - q|      L2 = ||p - q||_2      Hellinger = ||sqrt(p) - sqrt(q)||_2 / sqrt(2)
    JS = (KL(p || m) + KL(q || m)) / 2, m = (p + q) / 2      KL = KL(p_base || q_focus)
"""
from __future__ import annotations

import math
from typing import Dict

import torch

EPS = 1e-12
MEASURES = ("l1", "l2", "hellinger", "js", "kl")


def _clip(p: torch.Tensor) -> torch.Tensor:
    p = p.double().clamp_min(EPS)
    return p / p.sum(-1, keepdim=True)


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p * (p.log() - q.log())).sum(-1)


def fidelity(p_base: torch.Tensor, q_focus: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per-position measures ([...] each) between probability tensors [..., V]."""
    p, q = _clip(p_base), _clip(q_focus)
    m = (p + q) / 2
    return {
        "l1": (p - q).abs().sum(-1),
        "l2": (p - q).pow(2).sum(-1).sqrt(),
        "hellinger": (p.sqrt() - q.sqrt()).pow(2).sum(-1).sqrt() / math.sqrt(2),
        "js": (_kl(p, m) + _kl(q, m)) / 2,
        "kl": _kl(p, q),
    }


def median_iqr(values: torch.Tensor) -> Dict[str, float]:
    """Median and interquartile range of a flat sample."""
    v = values.double().flatten()
    q1, med, q3 = torch.quantile(v, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    return {"median": med, "iqr": q3 - q1}
