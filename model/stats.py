"""Per-layer statistics of the most recent forward pass: Gengram gates and MoE routing balance.

MoE: megatron-core's router already computes the load-balancing and z-losses and adds them, divided by their
coefficients, into a global per-layer tracker (moe_utils) that sums over forwards until someone clears it. A pre-hook
on each router zeroes its layer's slots and a post-hook reads what this forward added, then puts the old sum back,
so megatron's own tracking is untouched and the value read is this forward's alone. The post-hook also counts the
tokens routed to each expert from the router's routing map. Hooks keep tensors; nothing syncs until model_stats.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from megatron.core.transformer.moe.moe_utils import get_moe_layer_wise_logging_tracker
from megatron.core.transformer.moe.router import TopKRouter
from torch import nn

from .gengram import Gengram

TRACKED_LOSSES = {"load_balancing_loss": "aux_loss", "z_loss": "z_loss"}  # megatron's tracker name -> ours


class RoutingRecorder:
    """Hooks on one router; after a forward: tokens per expert, and the losses it computed (training only)."""

    def __init__(self, router: TopKRouter):
        self.tokens_per_expert: Optional[torch.Tensor] = None
        self.losses: Dict[str, torch.Tensor] = {}
        self._earlier: Dict[str, torch.Tensor] = {}
        router.register_forward_pre_hook(self.before_forward)
        router.register_forward_hook(self.after_forward)

    @staticmethod
    def _slots(router: TopKRouter) -> Dict[str, torch.Tensor]:
        tracker = get_moe_layer_wise_logging_tracker()
        return {name: tracker[name]["values"][router.layer_number - 1:router.layer_number]
                for name in TRACKED_LOSSES if name in tracker}

    def before_forward(self, router, args):
        self._earlier = {}
        for name, slot in self._slots(router).items():
            self._earlier[name] = slot.clone()
            slot.zero_()

    def after_forward(self, router, args, output):
        _, routing_map = output
        self.tokens_per_expert = routing_map.detach().sum(dim=0)
        computed = router.training and torch.is_grad_enabled()  # megatron's condition for both losses
        # The load-balancing loss on each rank is its share of the tensor x context-parallel group's loss
        # (local router probs over the group's tokens); scaled so the group average is the exact value.
        share = {"load_balancing_loss": router.tp_cp_group.size(), "z_loss": 1}
        self.losses = {}
        for name, slot in self._slots(router).items():
            if computed:
                self.losses[TRACKED_LOSSES[name]] = slot[0].clone() * share[name]
            earlier = self._earlier.get(name)
            if earlier is not None:
                slot.add_(earlier)

    def reset(self):
        self.tokens_per_expert, self.losses = None, {}


def attach_routing_recorders(model: nn.Module) -> None:
    """Give every MoE router in the model a RoutingRecorder (call once, at build time)."""
    for module in model.modules():
        if isinstance(module, TopKRouter) and not hasattr(module, "routing_recorder"):
            module.routing_recorder = RoutingRecorder(module)


def model_stats(model: nn.Module) -> Dict[str, float]:
    """This rank's statistics of the most recent forward pass, keyed by 1-based global layer number L:

    gengram/gate_mean/layer{L}: mean Gengram gate alpha.
    moe/aux_loss/layer{L}: load-balancing loss / its coefficient (1.0 = balanced); training forwards only.
    moe/z_loss/layer{L}: router z-loss / its coefficient, when the z-loss is on; training forwards only.
    moe/load_max/layer{L}: the busiest expert's share of the routed tokens x num_experts (1.0 = balanced).
    moe/load/layer{L}/expert{E}: each expert's share of the routed tokens (E = 0-based global expert index).
    Layers that have not run a forward since the last reset are left out. The caller averages across ranks.
    """
    stats: Dict[str, float] = {}
    for module in model.modules():
        gengram = getattr(module, "gengram", None)  # GengramTransformerLayer.gengram: None outside Gengram layers
        if isinstance(gengram, Gengram) and gengram.last_gate_mean is not None:
            stats[f"gengram/gate_mean/layer{module.layer_number}"] = float(gengram.last_gate_mean)
        recorder = getattr(module, "routing_recorder", None)
        if recorder is None or recorder.tokens_per_expert is None:
            continue
        layer = module.layer_number
        for name, value in recorder.losses.items():
            stats[f"moe/{name}/layer{layer}"] = float(value)
        load = recorder.tokens_per_expert.float() / recorder.tokens_per_expert.sum().clamp(min=1)
        stats[f"moe/load_max/layer{layer}"] = float(load.max()) * load.numel()
        for expert, share in enumerate(load.tolist()):
            stats[f"moe/load/layer{layer}/expert{expert}"] = share
    return stats


def reset_model_stats(model: nn.Module) -> None:
    """Forget the last forward's statistics (e.g. before an evaluation whose values should not be logged)."""
    for module in model.modules():
        if isinstance(module, Gengram):
            module.last_gate_mean = None
        recorder = getattr(module, "routing_recorder", None)
        if recorder is not None:
            recorder.reset()
