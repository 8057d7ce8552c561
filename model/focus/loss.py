"""The FOCUS training objective (paper appendix A eq. 6) and the optional teacher term.

Every position of the augmented sequence, base or summary, predicts the next real base (with summary_loss=none the
summary positions are not supervised). distill_kl > 0 adds KL(p_base || p_focus) on base positions, the frozen
backbone without compression being the teacher: an extension that targets the reported fidelity metric directly,
not part of the paper.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .layout import Layout, next_base_labels


@dataclass
class FocusLoss:
    total: torch.Tensor
    next_base: torch.Tensor  # mean cross-entropy over the supervised positions
    kl: Optional[torch.Tensor]  # mean KL(base || focus) over base positions (when distill_kl > 0)


def focus_loss(logits: torch.Tensor, layout: Layout, base_ids: torch.Tensor, summary_loss: str = "next_base",
               distill_kl: float = 0.0, teacher_logits: Optional[torch.Tensor] = None) -> FocusLoss:
    """logits [b, n, V] of the augmented sequence; base_ids [b, L]; teacher_logits [b, L, V] from the base model."""
    labels, valid = next_base_labels(base_ids, layout)
    if summary_loss == "none":
        valid = valid & ~layout.is_summary
    elif summary_loss != "next_base":
        raise ValueError(f"focus.summary_loss={summary_loss!r} is not one of: next_base, none")
    ce = F.cross_entropy(logits[:, valid].flatten(0, 1).float(), labels[:, valid].flatten())
    kl = None
    total = ce
    if distill_kl > 0:
        if teacher_logits is None:
            raise ValueError("focus.distill_kl > 0 needs the base model's logits (teacher_logits)")
        student = F.log_softmax(logits[:, ~layout.is_summary].float(), dim=-1)
        teacher = F.log_softmax(teacher_logits.float(), dim=-1)
        kl = F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1).mean()
        total = ce + distill_kl * kl
    return FocusLoss(total=total, next_base=ce, kl=kl)
