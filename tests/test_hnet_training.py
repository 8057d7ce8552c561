"""The tiny dnaHNet learns on synthetic DNA: its routers settle at the target ratios (3, 2) and its loss falls
(focus-hnet.md section 5.1, tests 9 and 10). One short training run, shared by both tests."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nucleotron.configs.loader import load_config
from nucleotron.model.hnet import HNetLM, parameter_groups

STEPS, BATCH, LENGTH = 120, 4, 48


def codon_dna(generator: torch.Generator, codons: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """Sequences of whole codons drawn from a fixed table of 16: base t+1 is predictable from the codon frame."""
    picks = torch.randint(0, len(codons), (batch, -(-length // 3)), generator=generator)
    return codons[picks].reshape(batch, -1)[:, :length]


@pytest.fixture(scope="module")
def history():
    torch.manual_seed(0)
    cfg = load_config("configs/models/dnahnet-tiny.yaml", ["model.hnet.ratio_loss_weight=0.1"]).model.hnet
    model = HNetLM(cfg, vocab_size=8)
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.0, [1.0, 1.0, 1.0]), lr=5e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, STEPS, eta_min=5e-4)
    generator = torch.Generator().manual_seed(1)
    codons = torch.randint(0, 4, (16, 3), generator=generator)
    losses = []
    for _ in range(STEPS):
        tokens = codon_dna(generator, codons, BATCH, LENGTH + 1)
        out = model(tokens[:, :-1])
        ce = F.cross_entropy(out.logits.flatten(0, 1), tokens[:, 1:].flatten())
        (ce + cfg.ratio_loss_weight * sum(model.ratio_losses(out.routers))).backward()
        optimizer.step()
        optimizer.zero_grad()
        schedule.step()
        losses.append(ce.item())
    model.eval()
    with torch.no_grad():
        routers = model(codon_dna(generator, codons, 16, 96)).routers
    selected = [(r.boundary & r.mask).sum().item() / r.mask.sum().item() for r in routers]
    return {"losses": losses, "selected": selected, "targets": list(cfg.target_ratios)}


def test_compression_converges_to_the_target_ratios(history):
    for stage, (fraction, target) in enumerate(zip(history["selected"], history["targets"]), start=1):
        assert abs(fraction - 1 / target) < 0.05, f"stage {stage}: selected {fraction:.3f}, target 1/{target:g}"


def test_loss_decreases(history):
    losses = history["losses"]
    first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert last < first - 0.5
    assert last < math.log(4) - 0.1  # below a model that knows only the base frequencies: it uses the codon frame
