"""Our ModelConfig + ParallelConfig -> megatron-core's TransformerConfig (or MLATransformerConfig)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer import MLATransformerConfig, TransformerConfig

from nucleotron.configs import ModelConfig, ParallelConfig

RECOMPUTE = {  # our switch -> megatron's (granularity, method, num_layers)
    "none": (None, None, None),
    "selective": ("selective", None, None),
    "full": ("full", "uniform", 1),
}


def transformer_config(model: ModelConfig, parallel: ParallelConfig, precision: str = "fp32",
                       grouped_gemm: bool = False) -> TransformerConfig:
    """The paper's backbone conventions: RMSNorm, SwiGLU, no biases, no dropout, init std from the config.

    grouped_gemm: megatron's moe_grouped_gemm, set with the TransformerEngine spec (TEGroupedMLP experts); the
    torch-native spec groups its GEMMs in nucleotron.model.experts and leaves it off."""
    granularity, method, num_layers = RECOMPUTE[model.recompute]
    bf16 = precision == "bf16"
    kwargs = dict(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        kv_channels=model.kv_channels,
        ffn_hidden_size=model.ffn_hidden_size,
        normalization="RMSNorm",
        layernorm_epsilon=model.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=model.init_std,
        tensor_model_parallel_size=parallel.tensor,
        pipeline_model_parallel_size=parallel.pipeline,
        expert_model_parallel_size=parallel.expert,
        context_parallel_size=parallel.context,
        sequence_parallel=parallel.sequence_parallel,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        pipeline_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_cpu_initialization=not torch.cuda.is_available(),
        recompute_granularity=granularity,
        recompute_method=method,
        recompute_num_layers=num_layers,
    )
    moe = model.moe
    if moe.num_experts > 0:
        kwargs.update(
            num_moe_experts=moe.num_experts,
            moe_router_topk=moe.top_k,
            moe_ffn_hidden_size=moe.ffn_hidden_size or model.ffn_hidden_size,
            moe_aux_loss_coeff=moe.aux_loss_coeff,
            moe_z_loss_coeff=moe.z_loss_coeff or None,  # 0 would log z_loss / 0 = nan
            moe_router_load_balancing_type="aux_loss",
            moe_router_dtype="fp32",
            moe_token_dispatcher_type=moe.dispatcher,
            moe_grouped_gemm=grouped_gemm,
        )
    if model.attention == "mla":
        mla = model.mla
        return MLATransformerConfig(
            q_lora_rank=mla.q_lora_rank,
            kv_lora_rank=mla.kv_lora_rank,
            qk_head_dim=mla.qk_head_dim,
            qk_pos_emb_head_dim=mla.qk_pos_emb_head_dim,
            v_head_dim=mla.v_head_dim,
            rope_type="rope",  # megatron's MLA default is YaRN (x40 scaling); every variant here uses plain RoPE
            rotary_base=model.rope_base,
            **kwargs,
        )
    return TransformerConfig(**kwargs)
