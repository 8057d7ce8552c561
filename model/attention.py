"""Core attention backends behind one switch (`model.attention_backend`): flash-attn, PyTorch SDPA, megatron local.

megatron-core's local DotProductAttention materialises the [b, heads, s, s] score matrix (8k tokens: 2 GB per
layer and micro-batch in bf16) and rejects MLA's separate key/value head sizes; SDPA uses fused flash/cuDNN kernels
on Hopper and the math kernel on CPU, and takes GQA and MLA shapes directly.
"""
from __future__ import annotations

import importlib.util
import math
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule

def flash_attn_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


def resolve_backend(requested: str) -> str:
    """'auto' -> the fastest backend this machine has; an explicit choice that cannot run is an error."""
    if requested == "auto":
        return "flash" if flash_attn_available() else "sdpa"
    if requested == "flash" and not flash_attn_available():
        raise RuntimeError("model.attention_backend=flash needs CUDA and the flash-attn package "
                           "(pip install 'nucleotron[gpu]'); use model.attention_backend=sdpa or auto")
    return requested


class _FusedCoreAttention(MegatronModule):
    """Shared shape handling: megatron passes [s, b, heads, dim] tensors and expects [s, b, heads*v_dim] back."""

    def __init__(self, config, layer_number: int, attn_mask_type: AttnMaskType, attention_type: str,
                 attention_dropout: Optional[float] = None, softmax_scale: Optional[float] = None,
                 cp_comm_type: Optional[str] = None, pg_collection=None,
                 k_channels: Optional[int] = None, v_channels: Optional[int] = None):
        super().__init__(config=config)
        if config.context_parallel_size > 1:
            raise NotImplementedError(f"{type(self).__name__} does not split sequences across context-parallel "
                                      "ranks; context parallelism needs TransformerEngine attention")
        if attention_dropout or (attention_dropout is None and config.attention_dropout):
            raise ValueError("attention dropout is not supported by the fused backends (the paper uses 0)")
        head_dim = k_channels or config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
        self.attn_mask_type = attn_mask_type

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError("packed sequences and attention bias need TransformerEngine attention")
        mask_type = attn_mask_type or self.attn_mask_type
        seq, batch = query.shape[0], query.shape[1]
        out = self.attend(query, key, value, attention_mask, causal=mask_type == AttnMaskType.causal)
        return out.reshape(seq, batch, -1)


class SDPAAttention(_FusedCoreAttention):
    """torch.nn.functional.scaled_dot_product_attention; a given mask (True = masked, megatron's convention) wins."""

    def attend(self, query, key, value, attention_mask, causal: bool):
        q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))  # [b, heads, s, dim]
        mask = None if attention_mask is None else ~attention_mask
        # GQA: SDPA maps each key/value group to heads/groups query heads itself, without copying K/V.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                             scale=self.softmax_scale, enable_gqa=k.shape[1] != q.shape[1])
        return out.permute(2, 0, 1, 3)  # [s, b, heads, v_dim]


class FlashAttention(_FusedCoreAttention):
    """flash-attn 2 (GPU only, bf16/fp16); handles GQA natively."""

    def attend(self, query, key, value, attention_mask, causal: bool):
        if attention_mask is not None:
            raise NotImplementedError("flash-attn takes no explicit mask; use model.attention_backend=sdpa")
        from flash_attn import flash_attn_func

        q, k, v = (x.transpose(0, 1) for x in (query, key, value))  # [b, s, heads, dim]
        out = flash_attn_func(q, k, v, causal=causal, softmax_scale=self.softmax_scale)
        return out.transpose(0, 1)


def core_attention_class(requested: str):
    return {"flash": FlashAttention, "sdpa": SDPAAttention, "local": DotProductAttention}[resolve_backend(requested)]
