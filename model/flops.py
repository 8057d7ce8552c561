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
