"""Model FLOPs per token, counted from the config, for throughput and MFU logging.

Conventions (so numbers compare across runs and papers):
- A multiply-add is 2 FLOPs; only matrix products count. Embedding and k-mer table lookups, the window mean,
  norms, activations, softmax, the Gengram gate's dot product and residual adds count 0.
- Causal attention is halved: each query attends to seq_len / 2 keys on average, as flash attention skips the
  masked half (torchtitan counts the full seq_len, i.e. twice this term).
- MoE: each token passes through top_k experts plus the router.
- Training = 3 x forward (backward = 2 x forward). Model FLOPs: activation recompute is not counted.
"""
from __future__ import annotations

from typing import Dict

from nucleotron.configs import ModelConfig

from .params import attention_projection_params, head_dim, swiglu_params


def attention_head_dims(cfg: ModelConfig) -> tuple:
    """(query/key dim, value dim) of one attention head."""
    if cfg.attention == "mla":
        return cfg.mla.qk_head_dim + cfg.mla.qk_pos_emb_head_dim, cfg.mla.v_head_dim
    return head_dim(cfg), head_dim(cfg)


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> Dict[str, float]:
    """Forward FLOPs per token by part (whole model, all layers); attention_core is QK^T plus the weighted sum of V."""
    h, layers = cfg.hidden_size, cfg.num_layers
    qk_dim, v_dim = attention_head_dims(cfg)
    keys_per_query = seq_len / 2  # causal
    moe = cfg.moe
    if moe.num_experts > 0:
        mlp = moe.top_k * swiglu_params(h, moe.ffn_hidden_size or cfg.ffn_hidden_size)
        router = moe.num_experts * h
    else:
        mlp, router = swiglu_params(h, cfg.ffn_hidden_size), 0
    g = cfg.gengram
    features = len(g.orders) * g.table_dim
    gengram = 2 * features * h + g.conv_kernel * h  # key and value projections, depthwise conv
    return {
        "attention_projections": 2.0 * layers * attention_projection_params(cfg),
        "attention_core": 2.0 * layers * cfg.num_attention_heads * keys_per_query * (qk_dim + v_dim),
        "mlp": 2.0 * layers * mlp,
        "router": 2.0 * layers * router,
        "logits": 2.0 * h * cfg.vocab_size,
        "gengram": 2.0 * len(g.layers) * gengram,
    }


def training_flops_per_token(model_cfg: ModelConfig, seq_len: int) -> float:
    """Model FLOPs of one training step (forward + backward) per token at this sequence length."""
    return 3.0 * sum(forward_flops_per_token(model_cfg, seq_len).values())


# ------------------------------------------------------------------------------------------ H-Net (model.arch=hnet)


def _attention_keys_per_query(seq_len: float, window: int) -> float:
    """Mean keys a causal query sees: seq_len / 2 for full attention (the convention above), at most window + 1."""
    if window < 0 or window + 1 >= seq_len / 2:
        return seq_len / 2
    return (window + 1) - window * (window + 1) / (2 * seq_len)


def hnet_forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> Dict[str, float]:
    """Forward FLOPs per input base by part, for an H-Net whose routers hit their target ratios: stage s runs on
    seq_len / (N_1 ... N_s) positions, so its per-base cost is its per-position cost divided by that product.

    Mamba-2 counts its projections, the depthwise conv and the chunked SSD (intra-chunk C.B products and weighted
    sums over half a chunk on average, plus the state update and readout); attention counts projections and the
    (windowed) causal core; routers count W_q and W_k, and each routing stage its fp32 residual projection. The EMA,
    chunk gathers, norms and activations count 0, as above."""
    from nucleotron.model.hnet.layout import parse_stack, stage_layouts

    h = cfg.hnet
    ssm = h.ssm
    parts = {"mamba2": 0.0, "attention_projections": 0.0, "attention_core": 0.0, "mlp": 0.0, "routing": 0.0,
             "logits": 2.0 * h.d_model[0] * cfg.vocab_size}
    positions_per_base = 1.0
    layouts = stage_layouts(h.layout)
    for s, stacks in enumerate(layouts):
        d, di = h.d_model[s], h.d_intermediate[s]
        length = seq_len * positions_per_base
        inner = ssm.expand * d
        heads = inner // ssm.headdim
        conv_dim = inner + 2 * ssm.d_state
        mamba = (2 * d * (2 * inner + 2 * ssm.d_state + heads) + 2 * conv_dim * ssm.d_conv
                 + 2 * (min(ssm.chunk_size, length) / 2) * (heads * ssm.d_state + inner) + 4 * inner * ssm.d_state
                 + 2 * inner * d)
        keys = _attention_keys_per_query(length, h.window[s])
        for block in (b for stack in stacks for b in parse_stack(stack)):
            if block.mixer == "mamba2":
                parts["mamba2"] += positions_per_base * mamba
            else:
                parts["attention_projections"] += positions_per_base * 2 * 4 * d * d
                parts["attention_core"] += positions_per_base * 2 * keys * 2 * d
            if block.mlp:
                parts["mlp"] += positions_per_base * 2 * 3 * d * di
        if s < len(layouts) - 1:
            parts["routing"] += positions_per_base * 2 * 3 * d * d  # W_q, W_k, residual_proj
            positions_per_base /= h.target_ratios[s]
    return parts


def hnet_training_flops_per_token(model_cfg: ModelConfig, seq_len: int) -> float:
    """Model FLOPs of one H-Net training step (forward + backward) per base at this sequence length."""
    return 3.0 * sum(hnet_forward_flops_per_token(model_cfg, seq_len).values())
