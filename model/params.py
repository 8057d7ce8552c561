"""Parameter counts from the config alone, so a 10B model is counted in microseconds without allocating it.

The formulas follow the layers megatron-core builds for these configs (no biases, RMSNorm, SwiGLU, untied
embeddings); tests check them against `sum(p.numel())` of real tiny models.
"""
from __future__ import annotations

from typing import Dict

from nucleotron.configs import GengramConfig, ModelConfig


def head_dim(cfg: ModelConfig) -> int:
    return cfg.kv_channels or cfg.hidden_size // cfg.num_attention_heads


def attention_projection_params(cfg: ModelConfig) -> int:
    """Weights of the attention's linear layers (each used once per token: FLOPs = 2 * this)."""
    h, heads = cfg.hidden_size, cfg.num_attention_heads
    if cfg.attention == "mla":
        mla = cfg.mla
        qk = mla.qk_head_dim + mla.qk_pos_emb_head_dim
        if mla.q_lora_rank is None:
            q = h * heads * qk
        else:  # down- and up-projection
            q = h * mla.q_lora_rank + mla.q_lora_rank * heads * qk
        kv = (h * (mla.kv_lora_rank + mla.qk_pos_emb_head_dim)
              + mla.kv_lora_rank * heads * (mla.qk_head_dim + mla.v_head_dim))
        return q + kv + heads * mla.v_head_dim * h
    d = head_dim(cfg)
    groups = cfg.num_query_groups or heads
    return h * (heads + 2 * groups) * d + heads * d * h  # fused qkv + output projection


def attention_params(cfg: ModelConfig) -> int:
    """Projections plus MLA's latent RMSNorms (q and kv down-projections); MHA/GQA have no attention norms."""
    norms = 0
    if cfg.attention == "mla":
        norms = cfg.mla.kv_lora_rank + (cfg.mla.q_lora_rank or 0)
    return attention_projection_params(cfg) + norms


def swiglu_params(hidden: int, ffn: int) -> int:
    return hidden * 2 * ffn + ffn * hidden  # gated fc1 (gate and up) + fc2


def gengram_params(g: GengramConfig, hidden: int) -> int:
    """One active Gengram module: k-mer tables, key/value projections, two RMSNorms, depthwise conv."""
    tables = sum(5 ** n for n in g.orders) * g.table_dim
    features = len(g.orders) * g.table_dim
    return tables + 2 * features * hidden + 2 * hidden + g.conv_kernel * hidden


def count_parameters(cfg: ModelConfig) -> Dict[str, int]:
    """Total and active (top-k experts only) parameters, with the pieces they are made of."""
    h = cfg.hidden_size
    embeddings = 2 * cfg.vocab_size * h  # untied input embedding and output layer
    attention = attention_params(cfg)
    norms = 2 * h  # input and pre-MLP RMSNorm
    moe = cfg.moe
    if moe.num_experts > 0:
        expert = swiglu_params(h, moe.ffn_hidden_size or cfg.ffn_hidden_size)
        router = moe.num_experts * h
        mlp_total, mlp_active = moe.num_experts * expert + router, moe.top_k * expert + router
    else:
        mlp_total = mlp_active = swiglu_params(h, cfg.ffn_hidden_size)
    gengram = len(cfg.gengram.layers) * gengram_params(cfg.gengram, h)
    fixed = embeddings + h + gengram  # + final RMSNorm
    total = fixed + cfg.num_layers * (attention + norms + mlp_total)
    active = fixed + cfg.num_layers * (attention + norms + mlp_active)
    return {
        "total_params": total,
        "active_params": active,
        "embedding_params": embeddings,
        "attention_params_per_layer": attention,
        "mlp_params_per_layer": mlp_total,
        "gengram_params": gengram,
    }


def architecture(cfg: ModelConfig) -> Dict[str, object]:
    """The architecture facts a user checks before a run (what `nucleotron model info` prints)."""
    moe = cfg.moe
    info: Dict[str, object] = {
        "layers": cfg.num_layers,
        "hidden": cfg.hidden_size,
        "heads": cfg.num_attention_heads,
        "kv_groups": cfg.num_query_groups or cfg.num_attention_heads,
        "head_dim": head_dim(cfg) if cfg.attention == "standard" else None,
        "attention": cfg.attention,
        "ffn_hidden": cfg.ffn_hidden_size if moe.num_experts == 0 else None,
        "experts": moe.num_experts,
        "top_k": moe.top_k if moe.num_experts else None,
        "expert_ffn_hidden": (moe.ffn_hidden_size or cfg.ffn_hidden_size) if moe.num_experts else None,
        "vocab_size": cfg.vocab_size,
        "rope_base": cfg.rope_base,
        "gengram_layers": list(cfg.gengram.layers),
        "gengram_orders": list(cfg.gengram.orders) if cfg.gengram.layers else None,
        "gengram_window": cfg.gengram.window if cfg.gengram.layers else None,
        "gengram_table_dim": cfg.gengram.table_dim if cfg.gengram.layers else None,
    }
    info.update(count_parameters(cfg))
    return info
