"""Build the GPT-style decoder from megatron-core: layer spec + TransformerConfig -> GPTModel."""
from __future__ import annotations

from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

from nucleotron.configs import NucleotronConfig

from .attention import core_attention_class
from .transformer_config import transformer_config


def layer_spec(cfg: NucleotronConfig):
    """megatron-core's local (no TransformerEngine) layer spec, with the configured core-attention backend."""
    model = cfg.model
    spec = get_gpt_layer_local_spec(
        num_experts=model.moe.num_experts or None,
        multi_latent_attention=model.attention == "mla",
        qk_layernorm=model.attention == "mla",  # MLA's latent RMSNorms (q and kv down-projections); none for MHA/GQA
        normalization="RMSNorm",
    )
    spec.submodules.self_attention.submodules.core_attention = core_attention_class(model.attention_backend)
    return spec


def build_gpt_model(cfg: NucleotronConfig, pre_process: bool = True, post_process: bool = True) -> GPTModel:
    """The decoder for this rank's pipeline stage; parallel state must be initialised first."""
    model = cfg.model
    return GPTModel(
        config=transformer_config(model, cfg.parallel, cfg.train.precision),
        transformer_layer_spec=layer_spec(cfg),
        vocab_size=model.vocab_size,
        max_sequence_length=cfg.data.seq_len,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=False,
        position_embedding_type="rope",
        rotary_base=int(model.rope_base),
    )
