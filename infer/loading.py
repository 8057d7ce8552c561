"""One way into a trained model for scoring, embeddings and probes: a run directory, a checkpoint (training or
imported weights) or an exported Hugging Face folder -> the plain-PyTorch model of modeling_nucleotron.py.

Megatron is needed only to read a checkpoint (infer/checkpoint.py); inference itself runs the plain model, whose
logits the export tests check against megatron's, on CPU or a GPU, with any batch of right-padded sequences.
H-Net checkpoints (model.arch=hnet, written by the DeepSpeed engine) load as the framework's own HNetLM, which
scores through its parallel forward or its recurrent step (`nucleotron score --mode`); commands that need the GPT
model (embed, probe, HF export) refuse them by name (`allow_hnet`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, Optional, Union

import torch

from .modeling_nucleotron import NucleotronForCausalLM, NucleotronLMConfig

EXPORT_RECORD = "nucleotron_export.json"


@dataclass
class LoadedModel:
    model: Union[NucleotronForCausalLM, "HNetLM"]   # noqa: F821 (HNetLM for arch "hnet")
    vocab: Dict[str, int]     # token -> id (A, C, G, T, N, EOD, PAD)
    seq_len: int              # the training sequence length: the longest input scored in one window
    identity: dict            # where the weights came from (path, step, kind) for reports
    arch: str = "gpt"         # "gpt" (NucleotronForCausalLM) or "hnet" (nucleotron.model.hnet.HNetLM)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def is_hf_folder(path: str) -> bool:
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return False
    with open(config) as handle:
        return json.load(handle).get("model_type") == "nucleotron"


def hf_model_from_checkpoint(path):
    """(NucleotronForCausalLM in fp32 on CPU, Checkpoint) from a Nucleotron checkpoint (a path or a Checkpoint)."""
    from .checkpoint import megatron_state_dict
    from .hf_weights import hf_config, to_hf

    ckpt, state = megatron_state_dict(path)
    config = NucleotronLMConfig(**hf_config(ckpt.cfg, ckpt.vocab, ckpt.cfg.data.seq_len))
    with torch.device("meta"):
        model = NucleotronForCausalLM(config)
    model.load_state_dict(to_hf(state, ckpt.cfg), strict=True, assign=True)
    return model.eval(), ckpt


def load_model(path: str, device: Optional[str] = None, dtype: torch.dtype = torch.float32,
               allow_hnet: bool = False) -> LoadedModel:
    """The model at `path` on `device`; an H-Net checkpoint only when the caller can run one (`allow_hnet`), else a
    CheckpointError saying which command reads it."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    arch = "gpt"
    if is_hf_folder(path):
        model = NucleotronForCausalLM.from_pretrained(path, dtype=dtype)
        with open(os.path.join(path, "vocab.json")) as handle:
            hf_vocab = json.load(handle)
        vocab = {("EOD" if k == "<EOD>" else "PAD" if k == "<PAD>" else k): int(v) for k, v in hf_vocab.items()}
        identity = {"path": os.path.abspath(path), "format": "hf"}
        record = os.path.join(path, EXPORT_RECORD)
        if os.path.isfile(record):
            with open(record) as handle:
                identity["exported_from"] = json.load(handle)
        seq_len = model.config.max_position_embeddings
    else:
        from .checkpoint import build_hnet, is_hnet, read_checkpoint, require_gpt

        ckpt = read_checkpoint(path)
        if is_hnet(ckpt.cfg):
            if not allow_hnet:
                require_gpt(ckpt, "this command")
            model, arch = build_hnet(ckpt), "hnet"
        else:
            model, ckpt = hf_model_from_checkpoint(ckpt)
        vocab, seq_len = ckpt.vocab, ckpt.cfg.data.seq_len
        identity = {"path": ckpt.directory, "format": "nucleotron", "kind": ckpt.kind, "step": ckpt.step, "arch": arch}
    model = model.to(device=device, dtype=dtype).eval()
    return LoadedModel(model=model, vocab=vocab, seq_len=seq_len, identity=identity, arch=arch)
