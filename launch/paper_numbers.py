"""The Gengram paper's validation losses after 50B tokens (seq 8,192), to set a reproduction against.

A run is matched by what its config says (backbone, attention, Gengram layers and window), not by its name, so a
run launched by hand compares as well as one from configs/sweeps/ablations-50b/. Where two studies trained the same
setting (the MoE-1.2B GQA baseline appears in the cross-architecture table and as the layer sweep's baseline), the
study named in the run's W&B tags decides.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from nucleotron.configs import ModelConfig

W21 = 21


@dataclass(frozen=True)
class Reference:
    study: str
    backbone: str  # dense-0.3b | moe-1.2b
    attention: str  # mha | gqa | mla
    layers: Tuple[int, ...]  # Gengram layers; () = no Gengram
    window: Optional[int]  # None = no window (ignored without Gengram)
    loss: float


def _cross(backbone: str, attention: str, without: float, with_: float) -> List[Reference]:
    return [Reference("cross-arch", backbone, attention, (), None, without),
            Reference("cross-arch", backbone, attention, (3, 6, 10), W21, with_)]


REFERENCES: Tuple[Reference, ...] = tuple(
    _cross("moe-1.2b", "mha", 0.9476, 0.9434) + _cross("moe-1.2b", "gqa", 0.9565, 0.9447)
    + _cross("moe-1.2b", "mla", 0.9508, 0.9459) + _cross("dense-0.3b", "mha", 0.9763, 0.9633)
    + _cross("dense-0.3b", "gqa", 0.9786, 0.9658) + _cross("dense-0.3b", "mla", 0.9656, 0.9654)
    + [Reference("layer-sweep", "moe-1.2b", "gqa", (), None, 0.949)]
    + [Reference("layer-sweep", "moe-1.2b", "gqa", (layer,), None, loss)
       for layer, loss in ((10, 0.9349), (11, 0.9352), (9, 0.9442), (6, 0.9436), (1, 0.9561))]
    + [Reference("window-sweep", "moe-1.2b", "gqa", (10,), window, loss)
       for window, loss in ((21, 0.9360), (30, 0.9360), (20, 0.9368), (12, 0.9391), (6, 0.9457))]
)


def backbone_of(model: ModelConfig) -> Optional[str]:
    """The paper's ablation backbone this model is, or None (tiny test models, the balance study, 10B...)."""
    if model.num_layers != 12:
        return None
    if model.moe.num_experts == 0 and model.hidden_size == 1280:
        return "dense-0.3b"
    if model.moe.num_experts == 8 and model.hidden_size == 1024:
        return "moe-1.2b"
    return None


def attention_of(model: ModelConfig) -> str:
    if model.attention == "mla":
        return "mla"
    groups = model.num_query_groups
    return "gqa" if groups is not None and groups < model.num_attention_heads else "mha"


def references_for(model: ModelConfig, tags: List[str]) -> List[Reference]:
    """The paper's numbers for this setting; one when the run's tags name the study, else every match."""
    backbone = backbone_of(model)
    if backbone is None:
        return []
    layers = tuple(sorted(model.gengram.layers))
    window = model.gengram.window if layers else None
    matches = [ref for ref in REFERENCES if (ref.backbone, ref.attention, ref.layers) == (
        backbone, attention_of(model), layers) and (not layers or ref.window == window)]
    tagged = [ref for ref in matches if ref.study in tags]
    return tagged or matches
