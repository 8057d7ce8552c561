"""Build the GPT-style decoder from megatron-core: layer spec + TransformerConfig -> GPTModel."""
from __future__ import annotations

from typing import Dict, Optional

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

from nucleotron.configs import NucleotronConfig

from .attention import core_attention_class
from .gengram import symbol_codes_from_vocab
from .layer import GengramTransformerLayer, NucleotronGPTModel
from .norm import RMSNorm
from .transformer_config import transformer_config


def layer_spec(cfg: NucleotronConfig, vocab: Optional[Dict[str, int]] = None):
    """megatron-core's local (no TransformerEngine) layer spec, with the configured core-attention backend, our
    RMSNorm (which works under sequence parallelism) and our TransformerLayer subclass that holds a Gengram module
    in the configured layers."""
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
    spec.module = GengramTransformerLayer
    spec.params = {**(spec.params or {}), "gengram": model.gengram}
    if model.gengram.layers:
        if vocab is None:
            raise ValueError("model.gengram.layers is set, so the model needs the token vocabulary "
                             "(the pack manifest's 'vocab') to map token ids to A/C/G/T/N")
        spec.params.update(symbol_codes=symbol_codes_from_vocab(vocab, model.vocab_size), eod_id=vocab.get("EOD"))
    return spec


def block_spec(cfg: NucleotronConfig, config: TransformerConfig, vocab: Optional[Dict[str, int]] = None):
    """This pipeline stage's layers plus the final norm (megatron would pick its own norm class for that one)."""
    return TransformerBlockSubmodules(layer_specs=[layer_spec(cfg, vocab)] * get_num_layers_to_build(config),
                                      layer_norm=RMSNorm)


def build_gpt_model(cfg: NucleotronConfig, vocab: Optional[Dict[str, int]] = None, pre_process: bool = True,
                    post_process: bool = True) -> NucleotronGPTModel:
    """The decoder for this rank's pipeline stage; parallel state must be initialised first.

    vocab: token -> id (the pack manifest's vocabulary); required when the config has Gengram layers.
    """
    model = cfg.model
    config = transformer_config(model, cfg.parallel, cfg.train.precision)
    return NucleotronGPTModel(
        config=config,
        transformer_layer_spec=block_spec(cfg, config, vocab),
        vocab_size=model.vocab_size,
        max_sequence_length=cfg.data.seq_len,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=False,
        position_embedding_type="rope",
        rotary_base=int(model.rope_base),
        needs_input_ids=bool(model.gengram.layers),
    )
