"""Megatron-core parameter names and layouts -> the Hugging Face model in modeling_nucleotron.py.

Two tensors change layout; everything else is renamed:
- linear_qkv [groups * (heads/groups + 2) * head_dim, H]: per query group, its query heads, then one key and one
  value head (megatron's fused layout) -> q_proj, k_proj, v_proj;
- linear_fc1 [2 * ffn, H]: the SwiGLU gate half, then the up half -> gate_proj, up_proj.
"""
from __future__ import annotations

import re
from typing import Dict

import torch

from nucleotron.configs import NucleotronConfig

RENAMES = [  # (megatron regex, HF template); layer-local names after "decoder.layers.{i}."
    (r"embedding\.word_embeddings\.weight", "model.embed_tokens.weight"),
    (r"decoder\.final_layernorm\.weight", "model.norm.weight"),
    (r"output_layer\.weight", "lm_head.weight"),
    (r"decoder\.layers\.(\d+)\.input_layernorm\.weight", "model.layers.{0}.input_layernorm.weight"),
    (r"decoder\.layers\.(\d+)\.pre_mlp_layernorm\.weight", "model.layers.{0}.post_attention_layernorm.weight"),
    (r"decoder\.layers\.(\d+)\.self_attention\.linear_proj\.weight", "model.layers.{0}.self_attn.o_proj.weight"),
    (r"decoder\.layers\.(\d+)\.self_attention\.linear_(q_down_proj|q_up_proj|q_proj|kv_down_proj|kv_up_proj)\.weight",
     "model.layers.{0}.self_attn.{1}.weight"),
    (r"decoder\.layers\.(\d+)\.self_attention\.(q_layernorm|kv_layernorm)\.weight",
     "model.layers.{0}.self_attn.{1}.weight"),
    (r"decoder\.layers\.(\d+)\.mlp\.linear_fc2\.weight", "model.layers.{0}.mlp.down_proj.weight"),
    (r"decoder\.layers\.(\d+)\.mlp\.router\.weight", "model.layers.{0}.mlp.router.weight"),
    (r"decoder\.layers\.(\d+)\.mlp\.experts\.local_experts\.(\d+)\.linear_fc2\.weight",
     "model.layers.{0}.mlp.experts.{1}.down_proj.weight"),
    (r"decoder\.layers\.(\d+)\.gengram\.tables\.(\d+)", "model.layers.{0}.gengram.tables.{1}"),
    (r"decoder\.layers\.(\d+)\.gengram\.(key_proj|value_proj|norm_q|norm_k)\.weight",
     "model.layers.{0}.gengram.{1}.weight"),
    (r"decoder\.layers\.(\d+)\.gengram\.short_conv\.conv\.weight", "model.layers.{0}.gengram.short_conv.weight"),
]
FC1 = [(r"decoder\.layers\.(\d+)\.mlp\.linear_fc1\.weight", "model.layers.{0}.mlp"),
       (r"decoder\.layers\.(\d+)\.mlp\.experts\.local_experts\.(\d+)\.linear_fc1\.weight",
        "model.layers.{0}.mlp.experts.{1}")]
QKV = r"decoder\.layers\.(\d+)\.self_attention\.linear_qkv\.weight"


def hf_config(cfg: NucleotronConfig, vocab: Dict[str, int], seq_len: int) -> dict:
    """config.json fields for NucleotronLMConfig (the HF names where HF has one)."""
    m = cfg.model
    heads = m.num_attention_heads
    return {
        "model_type": "nucleotron", "architectures": ["NucleotronForCausalLM"],
        "vocab_size": m.vocab_size, "hidden_size": m.hidden_size, "num_hidden_layers": m.num_layers,
        "num_attention_heads": heads, "num_key_value_heads": m.num_query_groups or heads,
        "head_dim": m.kv_channels or m.hidden_size // heads, "intermediate_size": m.ffn_hidden_size,
        "rms_norm_eps": m.norm_eps, "rope_base": float(m.rope_base), "attention": m.attention,
        "q_lora_rank": m.mla.q_lora_rank, "kv_lora_rank": m.mla.kv_lora_rank, "qk_head_dim": m.mla.qk_head_dim,
        "qk_pos_emb_head_dim": m.mla.qk_pos_emb_head_dim, "v_head_dim": m.mla.v_head_dim,
        "num_experts": m.moe.num_experts, "num_experts_per_tok": m.moe.top_k,
        "moe_intermediate_size": m.moe.ffn_hidden_size or m.ffn_hidden_size,
        "gengram_layers": list(m.gengram.layers), "gengram_orders": list(m.gengram.orders),
        "gengram_window": m.gengram.window, "gengram_table_dim": m.gengram.table_dim,
        "gengram_conv_kernel": m.gengram.conv_kernel, "gengram_conv_dilation": m.gengram.conv_dilation,
        "gengram_reset_window_at_eod": m.gengram.reset_window_at_eod,
        "symbol_ids": [vocab.get(s, -1) for s in ("A", "C", "G", "T", "N")],
        "eos_token_id": vocab.get("EOD"), "pad_token_id": vocab.get("PAD"), "bos_token_id": None,
        "max_position_embeddings": seq_len, "initializer_range": m.init_std, "tie_word_embeddings": False,
    }


def split_qkv(weight: torch.Tensor, heads: int, groups: int, head_dim: int):
    per_group = weight.view(groups, heads // groups + 2, head_dim, -1)
    q = per_group[:, : heads // groups].reshape(heads * head_dim, -1)
    k = per_group[:, -2].reshape(groups * head_dim, -1)
    v = per_group[:, -1].reshape(groups * head_dim, -1)
    return q, k, v


def to_hf(state: Dict[str, torch.Tensor], cfg: NucleotronConfig) -> Dict[str, torch.Tensor]:
    """Megatron names (TP=1, full tensors) -> HF names; an unknown megatron name is an error, never dropped."""
    m = cfg.model
    heads, groups = m.num_attention_heads, m.num_query_groups or m.num_attention_heads
    head_dim = m.kv_channels or m.hidden_size // heads
    out: Dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        match = re.fullmatch(QKV, name)
        if match:
            prefix = f"model.layers.{match.group(1)}.self_attn"
            q, k, v = split_qkv(tensor, heads, groups, head_dim)
            out.update({f"{prefix}.q_proj.weight": q, f"{prefix}.k_proj.weight": k, f"{prefix}.v_proj.weight": v})
            continue
        for pattern, template in FC1:
            match = re.fullmatch(pattern, name)
            if match:
                prefix = template.format(*match.groups())
                gate, up = torch.chunk(tensor, 2, dim=0)
                out.update({f"{prefix}.gate_proj.weight": gate, f"{prefix}.up_proj.weight": up})
                break
        else:
            for pattern, template in RENAMES:
                match = re.fullmatch(pattern, name)
                if match:
                    out[template.format(*match.groups())] = tensor
                    break
            else:
                raise KeyError(f"megatron parameter {name!r} has no Hugging Face name; update infer/hf_weights.py")
    return {k: v.contiguous() for k, v in out.items()}
