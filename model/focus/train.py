"""One process's adapter training step on a batch of base ids in memory: for notebooks, the Python API and tests
(tests/test_focus_train.py trains its functional-test adapter with it). Training on token packs, data-parallel, with
checkpoints, exact resume, metrics and validation, is `nucleotron focus train` (train/engines/focus.py: the training
loop's FOCUS engine, same objective through model/focus/loss.pack_batch_loss).

Paper recipe (reference section 1.3): AdamW, lr 1e-4, weight decay 0.01, 200 warmup steps, only the summary
embedding and the adapter projections train. With focus.k_sampling set, each step draws its k from that list.
"""
from __future__ import annotations

import random
from typing import Optional, Tuple

import torch

from .adapter import FocusModel
from .loss import FocusLoss, focus_loss


def adapter_optimizer(model: FocusModel, lr: float = 1e-4, weight_decay: float = 0.01,
                      warmup_steps: int = 200) -> Tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable tensors only, with linear warmup then a constant rate."""
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(warmup_steps, 1)))
    return optimizer, schedule


def train_step(model: FocusModel, optimizer: torch.optim.Optimizer, base_ids: torch.Tensor,
               schedule: Optional[torch.optim.lr_scheduler.LRScheduler] = None,
               rng: Optional[random.Random] = None) -> FocusLoss:
    """Forward (k from focus.k_sampling when set), the FOCUS loss (plus the teacher KL when focus.distill_kl > 0),
    backward and one optimizer step."""
    cfg = model.cfg
    k = (rng or random).choice(list(cfg.k_sampling)) if cfg.k_sampling else cfg.k
    teacher = None
    if cfg.distill_kl > 0:
        with torch.no_grad():
            teacher = model.base_logits(base_ids)
    model.train()
    logits, layout = model(base_ids, k=k)
    loss = focus_loss(logits, layout, base_ids, cfg.summary_loss, cfg.distill_kl, teacher)
    optimizer.zero_grad(set_to_none=True)
    loss.total.backward()
    optimizer.step()
    if schedule is not None:
        schedule.step()
    return loss
