"""The FOCUS adapter on a frozen Nucleotron GPTModel (megatron-core): summary tokens, their own Q/K/V(/O), a mask.

How it attaches to megatron-core, at three narrow points and without touching the base weights or their names:
- each attention layer's `core_attention` is replaced by `FocusCoreAttention`, which delegates to the original
  backend unless a FOCUS forward is running; then it attends with the FOCUS mask (and, when streaming, over the
  cached summary K/V in front of the chunk);
- forward hooks on `linear_qkv` (and `linear_proj` when "o" is adapted) overwrite the summary rows of their output
  with the adapter's projection of the same input (the adapter holds only the adapted channels);
- forward (pre-)hooks on Gengram modules prepend the last few positions of the previous chunk when streaming, so
  the k-mer windows and short conv see the same neighbours as in the parallel forward.
A FOCUS forward computes the embedding, the decoder and the output layer itself (the summary embedding row replaces
the summary positions' embeddings; RoPE runs over the consecutive augmented positions, offset when streaming).
With no FOCUS forward running, the base model's own forward is bit-identical to the unwrapped model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from torch import nn

from nucleotron.configs import ConfigError
from nucleotron.configs.schema import FocusConfig

from .layout import Layout, insert_summaries
from .mask import MaskSpec, block_mask, dense_mask, flex_available

QKV = ("q", "k", "v")


@dataclass
class FocusKVCache:
    """The streaming cache: per attention layer K/V ([m, b, groups, dim]) of the kept positions, their Layout (the
    same for every layer), and per Gengram layer the last positions of its input (hidden, ids)."""

    keys: Dict[int, torch.Tensor] = field(default_factory=dict)
    values: Dict[int, torch.Tensor] = field(default_factory=dict)
    layout: Layout = field(default_factory=Layout.empty)
    gengram_tail: Dict[int, tuple] = field(default_factory=dict)

    def entries(self) -> int:
        """Kept K/V positions per layer."""
        return len(self.layout)

    def kv_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys.values(), *self.values.values()))

    def extend(self, layer: int, key: torch.Tensor, value: torch.Tensor):
        """Append this chunk's K/V for `layer`; returns the K/V the chunk attends to (cache + chunk)."""
        if layer in self.keys:
            key, value = torch.cat([self.keys[layer], key]), torch.cat([self.values[layer], value])
        self.keys[layer], self.values[layer] = key, value
        return key, value

    def keep(self, kept: torch.Tensor) -> None:
        """Drop every position where `kept` is False (eviction at a window end)."""
        index = kept.nonzero().squeeze(1)
        self.layout = self.layout.select(kept)
        for store in (self.keys, self.values):
            for layer in store:
                store[layer] = store[layer].index_select(0, index.to(store[layer].device))


@dataclass
class _Run:
    """What the hooks need during one FOCUS forward."""

    summary_rows: torch.Tensor  # [r] positions (along the sequence) holding summary tokens
    mask: object  # [s, keys] bool (True = attend) or a flex_attention BlockMask
    cache: Optional[FocusKVCache]


class _State:
    run: Optional[_Run] = None


class FocusCoreAttention(nn.Module):
    """Core attention that applies the FOCUS mask (and the streaming cache) during FOCUS forwards only."""

    def __init__(self, inner: nn.Module, state: _State, layer: int):
        super().__init__()
        self.inner, self.state, self.layer = inner, state, layer
        self.softmax_scale = getattr(inner, "softmax_scale", None)

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        run = self.state.run
        if run is None:
            return self.inner(query, key, value, attention_mask, attn_mask_type=attn_mask_type,
                              attention_bias=attention_bias, packed_seq_params=packed_seq_params)
        if run.cache is not None:
            key, value = run.cache.extend(self.layer, key, value)
        q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))  # [b, heads, s, dim]
        scale = self.softmax_scale if self.softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
        gqa = k.shape[1] != q.shape[1]
        if isinstance(run.mask, torch.Tensor):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=run.mask, scale=scale, enable_gqa=gqa)
        else:
            out = _compiled_flex_attention()(q, k, v, block_mask=run.mask, scale=scale, enable_gqa=gqa)
        return out.permute(2, 0, 1, 3).reshape(query.shape[0], query.shape[1], -1)


_FLEX = None


def _compiled_flex_attention():
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX = torch.compile(flex_attention, dynamic=False)
    return _FLEX


class SummaryProjection(nn.Module):
    """The adapter copy of one projection for summary rows: the adapted output channels only.

    kind 'column' (linear_qkv: input replicated over tensor-parallel ranks, output sharded) or 'row' (linear_proj:
    input sharded, output summed over ranks), matching megatron's ColumnParallel/RowParallelLinear at no SP."""

    def __init__(self, weight: torch.Tensor, channels: torch.Tensor, kind: str, init_from_base: bool, std: float):
        super().__init__()
        self.register_buffer("channels", channels, persistent=False)
        rows = weight.detach()[channels].clone()
        if not init_from_base:
            nn.init.normal_(rows, std=std)
        self.weight = nn.Parameter(rows)
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "column":
            return F.linear(tensor_parallel.copy_to_tensor_model_parallel_region(x), self.weight)
        return tensor_parallel.reduce_from_tensor_model_parallel_region(F.linear(x, self.weight))

    def overwrite(self, x: torch.Tensor, out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """`out` with the adapted channels of the summary `rows` recomputed from `x` by the adapter."""
        picked = out.index_select(0, rows)
        picked[..., self.channels] = self(x.index_select(0, rows)).to(out.dtype)
        return out.index_copy(0, rows, picked)


def qkv_channels(attention, adapted: List[str]) -> torch.Tensor:
    """Indices of the fused linear_qkv output channels of the adapted parts (megatron's per-group layout:
    [q of the group's heads | k | v] for each local query group)."""
    dim = attention.hidden_size_per_attention_head
    per_group = attention.num_attention_heads_per_partition // attention.num_query_groups_per_partition
    sizes = {"q": per_group * dim, "k": dim, "v": dim}
    group = torch.cat([torch.full((sizes[p],), p in adapted, dtype=torch.bool) for p in QKV])
    return group.repeat(attention.num_query_groups_per_partition).nonzero().squeeze(1)


def _check_base(base) -> None:
    config = base.config
    problems = []
    if config.multi_latent_attention:
        problems.append("model.attention=mla (FOCUS adapts MHA/GQA attention; use model.attention=standard)")
    if config.sequence_parallel:
        problems.append("parallel.sequence_parallel=true (summary rows are picked along the full sequence)")
    if config.pipeline_model_parallel_size > 1:
        problems.append("parallel.pipeline>1 (a FOCUS forward runs embedding, decoder and head in one stage)")
    if config.context_parallel_size > 1:
        problems.append("parallel.context>1")
    if config.add_bias_linear or config.add_qkv_bias:
        problems.append("linear biases (the adapter projections have none)")
    if problems:
        raise ValueError("FOCUS cannot wrap this model: " + "; ".join(problems))


class FocusModel(nn.Module):
    """A frozen base model plus the FOCUS summary embedding and adapter projections (the only trainable tensors)."""

    def __init__(self, base, cfg: FocusConfig):
        super().__init__()
        _check_base(base)
        if not 0 <= cfg.summary_token_id < base.vocab_size:
            raise ConfigError(f"focus.summary_token_id={cfg.summary_token_id} must lie in 0..{base.vocab_size - 1} "
                              f"(the model's vocabulary); pick an id the packs never use")
        self.base, self.cfg, self.state = base, cfg, _State()
        for param in base.parameters():
            param.requires_grad_(False)
        layers = list(base.decoder.layers)
        adapted = set(cfg.adapter_layers) or {layer.layer_number for layer in layers}
        std = base.config.init_method_std
        with torch.no_grad():
            row = base.embedding.word_embeddings(torch.tensor([[cfg.summary_token_id]],
                                                             device=base.embedding.word_embeddings.weight.device))
        self.summary_embedding = nn.Parameter(row.reshape(-1).detach().clone())
        self.qkv_adapters, self.proj_adapters = nn.ModuleDict(), nn.ModuleDict()
        self._hooks = []
        for layer in layers:
            attention, number = layer.self_attention, layer.layer_number
            attention.core_attention = FocusCoreAttention(attention.core_attention, self.state, number)
            if number in adapted:
                qkv_parts = [p for p in QKV if p in cfg.adapter_params]
                if qkv_parts:
                    weight = attention.linear_qkv.weight
                    adapter = SummaryProjection(weight, qkv_channels(attention, qkv_parts).to(weight.device),
                                                "column", cfg.init_from_base, std)
                    self.qkv_adapters[str(number)] = adapter
                    self._hooks.append(attention.linear_qkv.register_forward_hook(self._projection_hook(adapter)))
                if "o" in cfg.adapter_params:
                    weight = attention.linear_proj.weight
                    adapter = SummaryProjection(weight, torch.arange(weight.shape[0], device=weight.device), "row",
                                                cfg.init_from_base, std)
                    self.proj_adapters[str(number)] = adapter
                    self._hooks.append(attention.linear_proj.register_forward_hook(self._projection_hook(adapter)))
            gengram = getattr(layer, "gengram", None)
            if gengram is not None:
                self._hooks.append(gengram.register_forward_pre_hook(self._gengram_pre_hook(number, gengram)))
                self._hooks.append(gengram.register_forward_hook(self._gengram_hook(number)))
        self._gengram_trim: Dict[int, int] = {}
        self._masks: Dict[tuple, object] = {}
        self.base.eval()

    # -- hooks ------------------------------------------------------------------------------------------------
    def _projection_hook(self, adapter: SummaryProjection):
        def hook(module, args, output):
            run = self.state.run
            if run is None or run.summary_rows.numel() == 0:
                return None
            out, bias = output
            return adapter.overwrite(args[0], out, run.summary_rows), bias
        return hook

    def _gengram_pre_hook(self, number: int, gengram):
        reach = gengram.context + gengram.short_conv.left_pad  # inputs before t that output t depends on

        def hook(module, args):
            run = self.state.run
            if run is None or run.cache is None:
                return None
            hidden, ids = args
            tail = run.cache.gengram_tail.get(number)
            if tail is not None:
                hidden, ids = torch.cat([tail[0], hidden]), torch.cat([tail[1], ids], dim=1)
            self._gengram_trim[number] = 0 if tail is None else tail[0].shape[0]
            run.cache.gengram_tail[number] = (hidden[-reach:].detach(), ids[:, -reach:])
            return hidden, ids
        return hook

    def _gengram_hook(self, number: int):
        def hook(module, args, output):
            run = self.state.run
            if run is None or run.cache is None:
                return None
            return output[self._gengram_trim.pop(number):]
        return hook

    # -- forwards -----------------------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        """Only the adapter trains; the backbone stays in eval mode (no MoE aux-loss gradients into the adapter)."""
        super().train(mode)
        self.base.eval()
        return self

    def mask_spec(self, k: Optional[int] = None) -> MaskSpec:
        return MaskSpec(k=k or self.cfg.k, window=self.cfg.window, rule=self.cfg.raw_visibility,
                        summary_memory=self.cfg.summary_memory)

    def trainable_parameters(self) -> List[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def adapter_state_dict(self) -> Dict[str, torch.Tensor]:
        """The trained tensors only (the backbone comes from its own checkpoint)."""
        return {name: p.detach().cpu() for name, p in self.named_parameters() if p.requires_grad}

    def load_adapter_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        own = dict(self.named_parameters())
        expected = {name for name, p in own.items() if p.requires_grad}
        if set(state) != expected:
            raise ValueError(f"adapter state does not match this model and focus config: missing "
                             f"{sorted(expected - set(state))}, unexpected {sorted(set(state) - expected)}")
        with torch.no_grad():
            for name, tensor in state.items():
                own[name].copy_(tensor)

    def base_logits(self, base_ids: torch.Tensor) -> torch.Tensor:
        """[b, L, V] logits of the uncompressed base model (its own megatron forward, no FOCUS)."""
        positions = torch.arange(base_ids.shape[1], device=base_ids.device).expand_as(base_ids)
        return self.base(base_ids, positions, None)

    def forward(self, base_ids: torch.Tensor, k: Optional[int] = None):
        """The masked parallel (training) forward over the whole sequence: ([b, n, V] logits, Layout)."""
        spec = self.mask_spec(k)
        ids, layout = insert_summaries(base_ids, spec.k, self.cfg.summary_token_id)
        return self.run(ids, layout, self._training_mask(layout, spec, base_ids.device), spec.k, cache=None), layout

    def _training_mask(self, layout: Layout, spec: MaskSpec, device: torch.device):
        """The parallel forward's mask, built once per (length, rule, kernel): every batch of a run reuses it."""
        use_flex = self.cfg.attention_kernel == "auto" and flex_available(device)
        key = (len(layout), spec, use_flex, str(device))
        if key not in self._masks:
            if len(self._masks) >= 4:  # a few lengths (k sampling, a last short batch) at most
                self._masks.pop(next(iter(self._masks)))
            self._masks[key] = (block_mask if use_flex else dense_mask)(layout, layout, spec)
        return self._masks[key]

    def run(self, ids: torch.Tensor, layout: Layout, mask, k: int, cache: Optional[FocusKVCache]) -> torch.Tensor:
        """One FOCUS forward of augmented `ids` [b, n] at `layout`'s positions -> [b, n, V] logits."""
        base = self.base
        rows = layout.is_summary.nonzero().squeeze(1)
        self.state.run = _Run(summary_rows=rows, mask=mask, cache=cache)
        try:
            hidden = base.embedding(input_ids=ids, position_ids=None)  # [n, b, h]
            if rows.numel():
                summary = self.summary_embedding.to(hidden.dtype).expand(rows.numel(), hidden.shape[1], -1)
                hidden = hidden.index_copy(0, rows, summary)
            start = int(layout.positions(k)[0])
            rope = base.rotary_pos_emb(len(layout), offset=start)
            extra = {"context": ids} if base.needs_input_ids else {}
            hidden = base.decoder(hidden_states=hidden, attention_mask=None, rotary_pos_emb=rope, **extra)
            logits, _ = base.output_layer(hidden, runtime_gather_output=True)
        finally:
            self.state.run = None
            self._gengram_trim.clear()
        return logits.transpose(0, 1)
