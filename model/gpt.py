"""Build the GPT-style decoder from megatron-core: layer spec + TransformerConfig -> GPTModel."""
from __future__ import annotations

from typing import Dict, Optional

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

from nucleotron.configs import NucleotronConfig

from .attention import core_attention_class
from .gengram import symbol_codes_from_vocab
from .layer import GengramTransformerLayer, NucleotronGPTModel
from .transformer_config import transformer_config


def layer_spec(cfg: NucleotronConfig, vocab: Optional[Dict[str, int]] = None):
    """megatron-core's local (no TransformerEngine) layer spec, with the configured core-attention backend and
    our TransformerLayer subclass that holds a Gengram module in the configured layers."""
    model = cfg.model
    spec = get_gpt_layer_local_spec(
        num_experts=model.moe.num_experts or None,
        multi_latent_attention=model.attention == "mla",
        qk_layernorm=model.attention == "mla",  # MLA's latent RMSNorms (q and kv down-projections); none for MHA/GQA
        normalization="RMSNorm",
    )
    spec.submodules.self_attention.submodules.core_attention = core_attention_class(model.attention_backend)
    spec.module = GengramTransformerLayer
    spec.params = {**(spec.params or {}), "gengram": model.gengram}
    if model.gengram.layers:
        if vocab is None:
            raise ValueError("model.gengram.layers is set, so the model needs the token vocabulary "
                             "(the pack manifest's 'vocab') to map token ids to A/C/G/T/N")
        spec.params.update(symbol_codes=symbol_codes_from_vocab(vocab, model.vocab_size), eod_id=vocab.get("EOD"))
    return spec


def build_gpt_model(cfg: NucleotronConfig, vocab: Optional[Dict[str, int]] = None, pre_process: bool = True,
                    post_process: bool = True) -> NucleotronGPTModel:
    """The decoder for this rank's pipeline stage; parallel state must be initialised first.

    vocab: token -> id (the pack manifest's vocabulary); required when the config has Gengram layers.
    """
    model = cfg.model
    return NucleotronGPTModel(
        config=transformer_config(model, cfg.parallel, cfg.train.precision),
        transformer_layer_spec=layer_spec(cfg, vocab),
        vocab_size=model.vocab_size,
        max_sequence_length=cfg.data.seq_len,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=False,
        position_embedding_type="rope",
        rotary_base=int(model.rope_base),
        needs_input_ids=bool(model.gengram.layers),
    )
