"""Build the GPT-style decoder from megatron-core: layer spec + TransformerConfig -> GPTModel.

Two layer specs give the same model (parameter shapes and checkpoint keys): megatron-core's TransformerEngine spec
(fused norm+linear, TE attention, TEGroupedMLP experts) where TE imports on a GPU, and a torch-native one (megatron's
local layers, our RMSNorm, SDPA/flash attention, grouped-GEMM experts) everywhere else. `model.te` picks.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

from nucleotron.configs import NucleotronConfig
from nucleotron.configs.validate import TE_SETTINGS
from nucleotron.train import no_te_mode

from .attention import core_attention_class
from .experts import GroupedGemmExperts
from .gengram import symbol_codes_from_vocab
from .layer import GengramTransformerLayer, NucleotronGPTModel
from .norm import RMSNorm
from .transformer_config import transformer_config


def transformer_engine_importable() -> bool:
    return no_te_mode.transformer_engine_importable()


def use_transformer_engine(setting: str) -> bool:
    """model.te: auto -> TE when it imports and CUDA is present; on -> TE or an error saying why; off -> never."""
    setting = TE_SETTINGS[str(setting)]
    if setting == "off":
        return False
    cuda, te = torch.cuda.is_available(), transformer_engine_importable()
    if setting == "on" and not (cuda and te):
        missing = "a CUDA GPU" if not cuda else "the transformer_engine package (it does not import)"
        raise RuntimeError(f"model.te=on needs TransformerEngine on a CUDA GPU, but this machine lacks {missing}: "
                           "install it (pip install 'nucleotron[gpu]', or use the image in docker/) or set "
                           "model.te=auto or off for the torch-native layers")
    return cuda and te


# TE spec module names -> the torch-native spec's checkpoint names, so checkpoints load across the two paths. The
# native standard-attention spec already saves its norms under TE's fused names (megatron's local spec maps them).
TE_TO_NATIVE_KEYS = {
    ("standard", True): {"pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"},  # TE MoE keeps a separate TENorm
    ("standard", False): {},
    ("mla", True): {"self_attention.linear_q_up_proj.layer_norm_": "self_attention.q_layernorm.",
                    "self_attention.linear_kv_up_proj.layer_norm_": "self_attention.kv_layernorm."},
    ("mla", False): {"self_attention.linear_q_up_proj.layer_norm_": "self_attention.q_layernorm.",
                     "self_attention.linear_kv_up_proj.layer_norm_": "self_attention.kv_layernorm.",
                     "mlp.linear_fc1.layer_norm_": "pre_mlp_layernorm."},
}


def te_layer_spec(cfg: NucleotronConfig):
    """megatron-core's TransformerEngine spec: TE norms fused into the following linear, TE attention, and
    TEGroupedMLP experts (grouped GEMM); the MLA latent norms become the fused norms of the up-projections."""
    model = cfg.model
    mla, moe = model.attention == "mla", model.moe.num_experts > 0
    spec = get_gpt_layer_with_transformer_engine_spec(
        num_experts=model.moe.num_experts or None, moe_grouped_gemm=moe, multi_latent_attention=mla,
        qk_layernorm=mla)
    spec.submodules.sharded_state_dict_keys_map = dict(TE_TO_NATIVE_KEYS[model.attention, moe])
    if model.attention_backend != "auto":  # an explicit backend wins over TE attention
        spec.submodules.self_attention.submodules.core_attention = core_attention_class(model.attention_backend)
    return spec


def native_layer_spec(cfg: NucleotronConfig):
    """megatron-core's local spec with our RMSNorm (works under sequence parallelism), the configured core-attention
    backend and grouped-GEMM experts."""
    model = cfg.model
    spec = get_gpt_layer_local_spec(
        num_experts=model.moe.num_experts or None,
        multi_latent_attention=model.attention == "mla",
        normalization="RMSNorm",
    )
    layer = spec.submodules
    layer.input_layernorm = layer.pre_mlp_layernorm = RMSNorm
    if model.attention == "mla":  # the latent norms after the q and kv down-projections; none for MHA/GQA
        layer.self_attention.submodules.q_layernorm = layer.self_attention.submodules.kv_layernorm = RMSNorm
    layer.self_attention.submodules.core_attention = core_attention_class(model.attention_backend)
    if model.moe.num_experts:
        layer.mlp.submodules.experts.module = GroupedGemmExperts
    return spec


def layer_spec(cfg: NucleotronConfig, vocab: Optional[Dict[str, int]] = None, te: bool = False):
    """The layer spec of either path, with our TransformerLayer subclass that holds a Gengram module in the
    configured layers."""
    model = cfg.model
    spec = te_layer_spec(cfg) if te else native_layer_spec(cfg)
    spec.module = GengramTransformerLayer
    spec.params = {**(spec.params or {}), "gengram": model.gengram}
    if model.gengram.layers:
        if vocab is None:
            raise ValueError("model.gengram.layers is set, so the model needs the token vocabulary "
                             "(the pack manifest's 'vocab') to map token ids to A/C/G/T/N")
        spec.params.update(symbol_codes=symbol_codes_from_vocab(vocab, model.vocab_size), eod_id=vocab.get("EOD"))
    return spec


def block_spec(cfg: NucleotronConfig, config: TransformerConfig, vocab: Optional[Dict[str, int]] = None,
               te: bool = False):
    """This pipeline stage's layers plus the final norm (megatron would pick its own norm class for that one)."""
    return TransformerBlockSubmodules(layer_specs=[layer_spec(cfg, vocab, te)] * get_num_layers_to_build(config),
                                      layer_norm=RMSNorm)


def build_gpt_model(cfg: NucleotronConfig, vocab: Optional[Dict[str, int]] = None, pre_process: bool = True,
                    post_process: bool = True) -> NucleotronGPTModel:
    """The decoder for this rank's pipeline stage; parallel state must be initialised first.

    vocab: token -> id (the pack manifest's vocabulary); required when the config has Gengram layers.
    """
    model = cfg.model
    te = use_transformer_engine(model.te)
    no_te_mode.apply_no_te_patches()  # megatron-core's TE assumptions, when TE does not import (no-op otherwise)
    config = transformer_config(model, cfg.parallel, cfg.train.precision, grouped_gemm=te)
    return NucleotronGPTModel(
        config=config,
        transformer_layer_spec=block_spec(cfg, config, vocab, te),
        vocab_size=model.vocab_size,
        max_sequence_length=cfg.data.seq_len,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=False,
        position_embedding_type="rope",
        rotary_base=int(model.rope_base),
        needs_input_ids=bool(model.gengram.layers),
    )
