"""The H-Net language model: embeddings -> a recursive stage (encoder, routing, chunk, main network, dechunk,
decoder) -> lm_head. Module names follow goombalab/hnet (`backbone.encoder`, `backbone.main_network`, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import Isotropic
from .dc import (RouterOutput, RouterState, RoutingModule, chunk, confidence_ste, dechunk, dechunk_step,
                 ratio_loss)
from .layout import parse_stack, stage_layouts


@dataclass
class HNetOutput:
    logits: torch.Tensor           # [b, l, vocab]
    routers: List[RouterOutput]    # one per routing stage, outermost first


@dataclass
class StageState:
    """Decoding state of one stage (batch 1)."""

    encoder: Optional[list] = None
    router: RouterState = field(default_factory=RouterState)
    main: object = None
    last: Optional[torch.Tensor] = None  # the dechunk EMA's last value
    decoder: Optional[list] = None


def _ssm_kwargs(cfg) -> dict:
    s = cfg.ssm
    return dict(d_state=s.d_state, d_conv=s.d_conv, expand=s.expand, headdim=s.headdim, chunk_size=s.chunk_size)


class HNetStage(nn.Module):
    def __init__(self, cfg, stage: int, norm_eps: float = 1e-5):
        super().__init__()
        layouts = stage_layouts(cfg.layout)
        self.stage = stage
        self.is_innermost = stage == len(layouts) - 1
        self.d_model = cfg.d_model[stage]
        self.chunk_size = cfg.ssm.chunk_size
        stack = dict(d_model=self.d_model, d_intermediate=cfg.d_intermediate[stage], num_heads=cfg.num_heads[stage],
                     rotary_dim=cfg.rotary_dim[stage], window=cfg.window[stage], ssm=_ssm_kwargs(cfg), eps=norm_eps)
        if self.is_innermost:
            self.main_network = Isotropic(parse_stack(layouts[stage][0]), **stack)
        else:
            self.encoder = Isotropic(parse_stack(layouts[stage][0]), **stack)
            self.main_network = HNetStage(cfg, stage + 1, norm_eps)
            self.decoder = Isotropic(parse_stack(layouts[stage][1]), **stack)
            self.routing_module = RoutingModule(self.d_model)
            self.residual_proj = nn.Linear(self.d_model, self.d_model, dtype=torch.float32)  # kept in fp32
            nn.init.zeros_(self.residual_proj.weight)
            self.residual_proj.weight._no_reinit = True
        extra = self.d_model - cfg.d_model[stage - 1] if stage > 0 else 0
        self.pad_dimension = nn.Parameter(torch.zeros(extra)) if extra > 0 else None

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_dimension is None:
            return x
        return torch.cat([x, self.pad_dimension.to(x.dtype).expand(*x.shape[:-1], -1)], dim=-1)

    def _residual(self, h: torch.Tensor) -> torch.Tensor:
        with torch.autocast(h.device.type, enabled=False):
            return self.residual_proj(h.float())

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        width = x.shape[-1]
        x = self._pad(x)
        if self.is_innermost:
            return self.main_network(x)[..., :width], []
        h = self.encoder(x)
        residual = self._residual(h)
        router = self.routing_module(h, mask)
        chunks, inner_mask = chunk(h, router.boundary)
        z, inner = self.main_network(chunks, inner_mask)
        u = dechunk(z, router.boundary, router.prob, self.chunk_size)
        u = u.float() * confidence_ste(router.confidence).unsqueeze(-1) + residual
        return self.decoder(u.to(x.dtype))[..., :width], [router, *inner]

    def empty_state(self, device) -> StageState:
        if self.is_innermost:
            return StageState(main=self.main_network.empty_state(1, device))
        return StageState(encoder=self.encoder.empty_state(1, device), main=self.main_network.empty_state(device),
                          last=torch.zeros(1, 1, self.d_model, device=device), decoder=self.decoder.empty_state(1, device))

    def step(self, x: torch.Tensor, state: StageState):
        """One position of a batch-1 sequence: x [1, 1, d] -> ([1, 1, d], router outputs of the stages it reached)."""
        width = x.shape[-1]
        x = self._pad(x)
        if self.is_innermost:
            return self.main_network.step(x, state.main)[..., :width], []
        h = self.encoder.step(x, state.encoder)
        residual = self._residual(h)
        router = self.routing_module.step(h, state.router)
        inner: list = []
        z = None
        if bool(router.boundary[0, 0]):  # only boundaries reach the main network
            z, inner = self.main_network.step(h, state.main)
        last = dechunk_step(z, router, state.last)
        u = last * confidence_ste(router.confidence).unsqueeze(-1) + residual
        return self.decoder.step(u.to(x.dtype), state.decoder)[..., :width], [router, *inner]


class HNetLM(nn.Module):
    """Tokens [b, l] -> logits [b, l, vocab] and the routers' outputs; untied embeddings and lm_head."""

    def __init__(self, cfg, vocab_size: int, norm_eps: float = 1e-5):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.embeddings = nn.Embedding(vocab_size, cfg.d_model[0])
        self.backbone = HNetStage(cfg, 0, norm_eps)
        self.lm_head = nn.Linear(cfg.d_model[0], vocab_size, bias=False)
        self.init_weights(cfg.init_std)

    def stages(self) -> List[HNetStage]:
        stages, node = [], self.backbone
        while isinstance(node, HNetStage):
            stages.append(node)
            node = node.main_network
        return stages

    @torch.no_grad()
    def init_weights(self, std: float) -> None:
        """Linear weights N(0, std), output projections (out_proj, fc2) N(0, std / sqrt(residual additions of the
        enclosing stacks)); embeddings N(0, 1); the router's identity and the zero residual_proj stay."""
        nn.init.normal_(self.embeddings.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=std)
        residuals = 0
        for stage in self.stages():
            stacks = [stage.main_network] if stage.is_innermost else [stage.encoder, stage.decoder]
            residuals += sum(s.height for s in stacks)
            for stack in stacks:
                for name, module in stack.named_modules():
                    if isinstance(module, nn.Linear) and not getattr(module.weight, "_no_reinit", False):
                        scale = residuals ** -0.5 if name.endswith(("out_proj", "fc2")) else 1.0
                        nn.init.normal_(module.weight, std=std * scale)

    def forward(self, tokens: torch.Tensor, mask: Optional[torch.Tensor] = None) -> HNetOutput:
        if mask is None:
            mask = torch.ones_like(tokens, dtype=torch.bool)
        hidden, routers = self.backbone(self.embeddings(tokens), mask)
        return HNetOutput(self.lm_head(hidden), routers)

    def ratio_losses(self, routers: List[RouterOutput]) -> List[torch.Tensor]:
        return [ratio_loss(r, n) for r, n in zip(routers, self.cfg.target_ratios)]

    def empty_state(self, device=None) -> StageState:
        return self.backbone.empty_state(device or self.lm_head.weight.device)

    def step(self, token: torch.Tensor, state: StageState) -> HNetOutput:
        """token [1, 1] -> logits [1, 1, vocab] for the next position; `state` advances by one position."""
        if token.shape != (1, 1):
            raise ValueError(f"HNetLM.step decodes one sequence one token at a time; got tokens of shape {tuple(token.shape)}")
        hidden, routers = self.backbone.step(self.embeddings(token), state)
        return HNetOutput(self.lm_head(hidden), routers)

    def stage_of_parameters(self) -> Dict[int, int]:
        """id(parameter) -> the stage whose LR multiplier it takes: the innermost stage that contains it
        (embeddings and lm_head belong to stage 0)."""
        owner = {id(p): 0 for p in self.parameters()}
        for stage in self.stages():
            for p in stage.parameters():
                owner[id(p)] = stage.stage
        return owner


def parameter_groups(model: HNetLM, weight_decay: float, lr_multipliers: List[float]) -> List[dict]:
    """AdamW groups by (stage LR multiplier, decay): no weight decay on 1-D parameters (norms, biases, A_log, D,
    dt_bias, pad_dimension). Each group carries `lr_mult`; the schedule sets lr = base lr x lr_mult."""
    owner = model.stage_of_parameters()
    groups: Dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2 and not getattr(p, "_no_weight_decay", False)
        mult = float(lr_multipliers[owner[id(p)]])
        key = (mult, decay)
        if key not in groups:
            groups[key] = {"params": [], "lr_mult": mult, "weight_decay": weight_decay if decay else 0.0}
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups, key=lambda k: (-k[0], not k[1]))]
