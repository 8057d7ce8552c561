"""A megatron-core TransformerLayer that writes Gengram into the residual stream before attention.

How the token ids reach the layer: GPT layers have no cross-attention, so megatron's `context` argument is free.
`NucleotronGPTModel` passes the micro-batch's input_ids as `context`; TransformerBlock hands `context` to every layer
and back, and saves it with the other inputs when it checkpoints layers for recompute, so a recomputed layer sees the
ids of its own micro-batch (never a stale "current batch"), and every pipeline stage gets them from its own forward.
"""
from __future__ import annotations

from typing import Optional

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_layer import TransformerLayer
from megatron.core.utils import make_sharded_tensor_for_checkpoint

from nucleotron.configs import GengramConfig

from .gengram import Gengram
from .stats import attach_routing_recorders


class GengramTransformerLayer(TransformerLayer):
    """TransformerLayer with a Gengram module when its global 1-based layer number is in `gengram.layers`."""

    def __init__(self, config, submodules, layer_number: int = 1, hidden_dropout: Optional[float] = None,
                 pg_collection=None, vp_stage: Optional[int] = None, *, gengram: GengramConfig,
                 symbol_codes: Optional[torch.Tensor] = None, eod_id: Optional[int] = None):
        super().__init__(config, submodules, layer_number, hidden_dropout, pg_collection=pg_collection,
                         vp_stage=vp_stage)
        self.gengram = None
        if self.layer_number in gengram.layers:  # self.layer_number includes the pipeline offset
            if config.context_parallel_size > 1:
                raise NotImplementedError(
                    f"parallel.context={config.context_parallel_size}: Gengram layers do not support context "
                    "parallelism (their k-mer windows and conv would need the true neighbouring positions of the "
                    "zig-zag chunks); use parallel.context=1")
            if symbol_codes is None:
                raise ValueError("Gengram layers need the vocabulary's symbol codes (from the pack manifest)")
            self.gengram = Gengram(gengram, config.hidden_size, symbol_codes, eod_id=eod_id,
                                   init_std=config.init_method_std,
                                   sequence_parallel_group=self.tp_group if config.sequence_parallel else None)

    def _forward_attention(self, hidden_states, attention_mask=None, context=None, *args, **kwargs):
        if self.gengram is not None:
            if context is None:
                raise RuntimeError(f"layer {self.layer_number} has a Gengram module but received no input_ids; "
                                   f"call the model through NucleotronGPTModel.forward")
            hidden_states = self.gengram(hidden_states, context)
        hidden_states, _ = super()._forward_attention(hidden_states, attention_mask, None, *args, **kwargs)
        return hidden_states, context

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata=None):
        """Checkpoint entries. megatron stacks a layer's tensors along a [num_layers, ...] axis, which only works for
        tensors every layer has; Gengram lives in a few layers, so its tensors get their own key per global layer."""
        state = super().sharded_state_dict(prefix, sharded_offsets, metadata)
        if self.gengram is not None:
            own = f"{prefix}gengram."  # the block later renames "<...>.layers.<local>." to "<...>.layers."
            for dict_key in [k for k in state if k.startswith(own)]:
                name = dict_key[len(own):]
                state[dict_key] = make_sharded_tensor_for_checkpoint(
                    state[dict_key].data, f"{prefix}gengram_of_layer{self.layer_number}.{name}")
        return state


class NucleotronGPTModel(GPTModel):
    """GPTModel that forwards the micro-batch's input_ids to every layer (as `context`) when Gengram needs them.

    On pipeline stages after the first, pass the micro-batch's input_ids too: the embedding is skipped there, but
    Gengram layers on that stage read them.
    """

    def __init__(self, *args, needs_input_ids: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.needs_input_ids = needs_input_ids
        attach_routing_recorders(self)  # per-layer routing statistics for model/stats.py

    def forward(self, input_ids, position_ids, attention_mask, *args, extra_block_kwargs=None, **kwargs):
        if self.needs_input_ids:
            if input_ids is None:
                raise ValueError("this model has Gengram layers: pass input_ids on every pipeline stage")
            extra_block_kwargs = {**(extra_block_kwargs or {}), "context": input_ids}
        return super().forward(input_ids, position_ids, attention_mask, *args,
                               extra_block_kwargs=extra_block_kwargs, **kwargs)

    def gengram_modules(self):
        """(global layer number, Gengram) for the Gengram layers on this pipeline stage."""
        return [(layer.layer_number, layer.gengram) for layer in self.decoder.layers
                if getattr(layer, "gengram", None) is not None]
