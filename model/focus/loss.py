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


def pack_batch_loss(logits: torch.Tensor, layout: Layout, labels: torch.Tensor, loss_mask: torch.Tensor, eod: int,
                    summary_loss: str = "next_base", distill_kl: float = 0.0,
                    teacher_logits: Optional[torch.Tensor] = None):
    """The FOCUS objective on a training batch of a token pack, and what the loop reports.

    labels [b, L] are the pack's next tokens (label j follows token j, the last one included), loss_mask [b, L] its
    weights (soft-masked bases below 1). A base and the summary closing its k-mer both predict label j (eq. 6).
    Returns (objective, sums, kl_sums): objective = weighted mean cross-entropy over the supervised positions plus
    distill_kl x mean KL(base || focus) over base positions; sums [4] = (loss, tokens, base loss, bases) of the base
    positions only (train/loss.py's LossSums, EOD targets out of the base pair), so FOCUS losses and bits per base
    read like the uncompressed model's; kl_sums [2] = (KL sum, positions), zeros without a teacher.
    """
    local = layout.base_index - layout.base_index[0]
    targets, weights = labels[:, local], loss_mask[:, local].float()
    if summary_loss == "none":
        weights = weights * (~layout.is_summary).float()
    elif summary_loss != "next_base":
        raise ValueError(f"focus.summary_loss={summary_loss!r} is not one of: next_base, none")
    per = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
    objective = (per * weights).sum() / weights.sum().clamp_min(1e-12)
    rows = ~layout.is_summary
    base_ce, counted = per[:, rows].detach(), (loss_mask > 0).float()
    bases = counted * (labels != eod).float()
    sums = torch.stack([(base_ce * counted).sum(), counted.sum(), (base_ce * bases).sum(), bases.sum()])
    kl_sums = torch.zeros(2, dtype=torch.float64)
    if teacher_logits is not None:
        student = F.log_softmax(logits[:, rows].float(), dim=-1)
        teacher = F.log_softmax(teacher_logits.float(), dim=-1)
        kl = F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)  # [b, L]
        kl_sums = torch.stack([(kl.detach() * counted).sum().double().cpu(), counted.sum().double().cpu()])
        if distill_kl > 0:
            objective = objective + distill_kl * (kl * counted).sum() / counted.sum().clamp_min(1.0)
    return objective, sums.double().cpu(), kl_sums
