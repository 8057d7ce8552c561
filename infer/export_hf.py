"""`nucleotron export hf RUN_DIR|CHECKPOINT OUT/`: a Hugging Face model folder from a checkpoint of any layout.

OUT/ holds config.json, model.safetensors (sharded above --max-shard-size, with its index), the modeling and
tokenizer code (loaded with trust_remote_code=True), vocab.json with the training packs' token ids, and
nucleotron_export.json naming the source checkpoint. It is written beside OUT and renamed into place when complete.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import List

import torch

from nucleotron.configs.files import write_json_atomic

from .loading import EXPORT_RECORD

HERE = os.path.dirname(os.path.abspath(__file__))
CODE_FILES = ("modeling_nucleotron.py", "tokenization_nucleotron.py")
AUTO_MAP = {"AutoConfig": "modeling_nucleotron.NucleotronLMConfig",
            "AutoModel": "modeling_nucleotron.NucleotronModel",
            "AutoModelForCausalLM": "modeling_nucleotron.NucleotronForCausalLM"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def hf_vocab(vocab: dict) -> dict:
    """The tokenizer's vocabulary: the bases as themselves, EOD and PAD as <EOD> and <PAD>."""
    names = {"EOD": "<EOD>", "PAD": "<PAD>"}
    return {names.get(token, token): int(token_id) for token, token_id in vocab.items()
            if token in ("A", "C", "G", "T", "N", "EOD", "PAD")}


def write_tokenizer(out: str, vocab: dict, seq_len: int) -> None:
    write_json_atomic(os.path.join(out, "vocab.json"), hf_vocab(vocab))
    write_json_atomic(os.path.join(out, "tokenizer_config.json"), {
        "tokenizer_class": "NucleotronTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_nucleotron.NucleotronTokenizer", None]},
        "eos_token": "<EOD>", "pad_token": "<PAD>", "model_max_length": seq_len, "padding_side": "right"})


def export_hf(source: str, out: str, dtype: str = "float32", max_shard_size: str = "5GB") -> str:
    from .loading import hf_model_from_checkpoint

    model, ckpt = hf_model_from_checkpoint(source)
    model = model.to(DTYPES[dtype])
    model.config.auto_map = AUTO_MAP
    out = os.path.abspath(out.rstrip("/"))
    tmp = out + ".tmp-export"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    model.save_pretrained(tmp, max_shard_size=max_shard_size)
    for name in CODE_FILES:
        shutil.copyfile(os.path.join(HERE, name), os.path.join(tmp, name))
    write_tokenizer(tmp, ckpt.vocab, ckpt.cfg.data.seq_len)
    write_json_atomic(os.path.join(tmp, EXPORT_RECORD), {
        "source": ckpt.directory, "step": ckpt.step, "kind": ckpt.kind, "dtype": dtype,
        "config_yaml": ckpt.config_yaml})
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="nucleotron export", description="Export a trained model.")
    sub = parser.add_subparsers(dest="target", required=True)
    hf = sub.add_parser("hf", help="Hugging Face folder: AutoModelForCausalLM.from_pretrained(OUT, "
                                   "trust_remote_code=True)")
    hf.add_argument("source", help="RUN_DIR (newest complete checkpoint), a checkpoint directory, or the output "
                                   "of `nucleotron import`")
    hf.add_argument("out", help="output folder (replaced if it exists)")
    hf.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="weights dtype (default float32)")
    hf.add_argument("--max-shard-size", default="5GB", help="safetensors shard size (default 5GB)")
    args = parser.parse_args(argv)
    from .checkpoint import CheckpointError

    try:
        out = export_hf(args.source, args.out, args.dtype, args.max_shard_size)
    except CheckpointError as err:
        print(f"nucleotron export hf: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.source} -> {out}")
    return 0
