"""`nucleotron import gengram-megatron PATH --config configs/models/gengram-10b.yaml --out DIR`.

Converts the released Gengram checkpoint in Megatron's legacy `torch` format (PATH/mp_rank_00_<stage>/
model_optim_rng.pt, or PATH/iter_*/... , one file per pipeline stage, TP=1) into a weights-only Nucleotron
checkpoint: a dist_checkpointing save of {"model": ...} plus nucleotron.json (kind "weights"), which `export hf`,
`score`, `embed`, `eval probe` and `checkpoint.init_from=DIR` read.

The key mapping follows the public training script (Gengram_layer3-6-10_win21_pp2.sh: TransformerEngine layer spec,
PP=2, grouped-GEMM MoE experts) and the public Gengram module (parameters embeddings.{i}.weight, key_proj,
value_proj, norm_q, norm_k, short_conv.conv.weight in every layer; only the configured layers are kept).
Accepted per-layer spellings: TE's fused input norm (self_attention.linear_qkv.layer_norm_weight) or a separate
input_layernorm; MoE experts as TEGroupedMLP (experts.linear_fc{1,2}.weight<e>) or SequentialMLP
(experts.local_experts.<e>.linear_fc{1,2}.weight). Megatron's legacy GroupedMLP (experts.weight1/weight2) is not
read: its name is reported as unknown.
Files are read with torch.load(weights_only=True) only: nothing in them is unpickled as code.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import sys
from typing import Dict, List

import torch

from .checkpoint import CheckpointError

LAYER = re.compile(r"decoder\.layers\.(\d+)\.(.+)")


class ReleaseError(CheckpointError):
    """A public checkpoint this importer cannot convert; the message says why and what to do."""


def stage_files(path: str) -> List[str]:
    """The model_optim_rng.pt of each pipeline stage, in stage order (TP must be 1)."""
    if os.path.isfile(path):
        return [path]
    found = sorted(glob.glob(os.path.join(path, "mp_rank_*", "model_optim_rng.pt")))
    if not found:
        found = sorted(glob.glob(os.path.join(path, "iter_*", "mp_rank_*", "model_optim_rng.pt")))
        iterations = {os.path.basename(os.path.dirname(os.path.dirname(f))) for f in found}
        if len(iterations) > 1:
            raise ReleaseError(f"{path} holds several iterations ({', '.join(sorted(iterations))}); pass one "
                               f"iter_* directory")
    if not found:
        raise ReleaseError(f"{path}: no mp_rank_*/model_optim_rng.pt (Megatron `torch` format) found; for the "
                           f"`torch_dist` format convert with Megatron's checkpoint converter to `torch` first")
    ranks = [os.path.basename(os.path.dirname(f)) for f in found]
    if any(not re.fullmatch(r"mp_rank_00(_\d{3})?", r) for r in ranks):
        raise ReleaseError(f"{path}: tensor-parallel shards ({', '.join(ranks)}) are not supported; the released "
                           f"checkpoint is TP=1 (mp_rank_00_<pipeline stage>)")
    return found


def read_stage(path: str) -> Dict[str, torch.Tensor]:
    """The model state dict of one stage file, read without unpickling anything but tensors and containers."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError (or RuntimeError wrapping it) for any other object
        raise ReleaseError(
            f"{path} holds pickled Python objects besides tensors (Megatron stores its training arguments and RNG "
            f"states in the same file), and nucleotron only reads files with torch.load(weights_only=True). In an "
            f"environment you trust, save just the weights: python -c \"import torch; "
            f"torch.save(torch.load('{path}', weights_only=False)['model'], 'model_only.pt')\", keep the "
            f"mp_rank_* layout (or pass the file directly), and import that. (torch said: "
            f"{str(err).splitlines()[0][:300]})") from None
    state = content.get("model", content) if isinstance(content, dict) else None
    if not isinstance(state, dict):
        raise ReleaseError(f"{path}: expected a dict with a 'model' state dict, got {type(content).__name__}")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and "_extra_state" not in k}


def layer_name(rest: str) -> Dict[str, str]:
    """Public per-layer name -> Nucleotron's (megatron local spec) name; {} for names dropped."""
    fixed = {
        "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
        "input_layernorm.weight": "input_layernorm.weight",
        "self_attention.linear_qkv.weight": "self_attention.linear_qkv.weight",
        "self_attention.linear_proj.weight": "self_attention.linear_proj.weight",
        "pre_mlp_layernorm.weight": "pre_mlp_layernorm.weight",
        "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
        "mlp.linear_fc1.weight": "mlp.linear_fc1.weight",
        "mlp.linear_fc2.weight": "mlp.linear_fc2.weight",
        "mlp.router.weight": "mlp.router.weight",
        "gengram.key_proj.weight": "gengram.key_proj.weight",
        "gengram.value_proj.weight": "gengram.value_proj.weight",
        "gengram.norm_q.weight": "gengram.norm_q.weight",
        "gengram.norm_k.weight": "gengram.norm_k.weight",
        "gengram.short_conv.conv.weight": "gengram.short_conv.conv.weight",
    }
    if rest in fixed:
        return {rest: fixed[rest]}
    match = re.fullmatch(r"gengram\.embeddings\.(\d+)\.weight", rest)
    if match:
        return {rest: f"gengram.tables.{match.group(1)}"}
    match = re.fullmatch(r"mlp\.experts\.linear_fc([12])\.weight(\d+)", rest)
    if match:
        return {rest: f"mlp.experts.local_experts.{match.group(2)}.linear_fc{match.group(1)}.weight"}
    match = re.fullmatch(r"mlp\.experts\.local_experts\.(\d+)\.linear_fc([12])\.weight", rest)
    if match:
        return {rest: rest}
    return {}


def convert(stages: List[Dict[str, torch.Tensor]], cfg) -> Dict[str, torch.Tensor]:
    """Public per-stage state dicts -> one Nucleotron state dict (megatron names, TP=PP=1); unknown names fail."""
    model = cfg.model
    per_stage = model.num_layers // len(stages)
    if per_stage * len(stages) != model.num_layers:
        raise ReleaseError(f"{len(stages)} pipeline stages do not split model.num_layers={model.num_layers} evenly")
    keep_gengram = set(model.gengram.layers)
    out: Dict[str, torch.Tensor] = {}
    for stage, state in enumerate(stages):
        for name, tensor in state.items():
            if name in ("embedding.word_embeddings.weight", "decoder.final_layernorm.weight", "output_layer.weight"):
                out[name] = tensor
                continue
            match = LAYER.fullmatch(name)
            if not match:
                raise ReleaseError(f"stage {stage}: unexpected parameter {name!r} (not a layer, embedding, final "
                                   f"norm or output layer); this importer knows the released Gengram layout only")
            local, rest = int(match.group(1)), match.group(2)
            number = stage * per_stage + local + 1                       # global 1-based layer number
            prefix = f"decoder.layers.{number - 1}."
            if rest.startswith("gengram.") and number not in keep_gengram:
                continue                                                  # inactive layers' unused parameters
            mapped = layer_name(rest)
            if not mapped:
                raise ReleaseError(f"stage {stage}: parameter {name!r} (global layer {number}) has no Nucleotron "
                                   f"counterpart; this importer knows the released Gengram layout only")
            out[prefix + mapped[rest]] = tensor
    return out


def import_gengram(path: str, config_path: str, out: str, overrides=()) -> str:
    from nucleotron.configs import load_config
    from nucleotron.data_prep.tokens import VOCAB

    from .checkpoint import build_model, save_weights, single_process_megatron

    cfg = load_config(config_path, list(overrides))
    cfg.parallel.tensor = cfg.parallel.pipeline = cfg.parallel.expert = cfg.parallel.context = 1
    cfg.parallel.sequence_parallel = False
    cfg.train.precision = "fp32"
    files = stage_files(path)
    from tqdm import tqdm

    converted = convert([read_stage(f) for f in tqdm(files, desc="reading stages", unit="file")], cfg)
    with single_process_megatron(cfg):
        model = build_model(cfg, VOCAB)
        expected = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
        missing = sorted(set(expected) - set(converted))
        if missing:
            raise ReleaseError(f"{path}: the checkpoint lacks {len(missing)} parameter(s) the config "
                               f"{config_path} needs, e.g. {missing[:3]}; is it the right --config?")
        for name, tensor in converted.items():
            if name not in expected:
                raise ReleaseError(f"{path}: parameter {name} does not exist in the model of {config_path}")
            if tuple(tensor.shape) != tuple(expected[name].shape):
                raise ReleaseError(f"{path}: {name} has shape {tuple(tensor.shape)}, the model of {config_path} "
                                   f"expects {tuple(expected[name].shape)}; is it the right --config?")
        model.load_state_dict(converted, strict=False)
        return save_weights(model, cfg, dict(VOCAB), out)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="nucleotron import", description="Import weights trained elsewhere.")
    sub = parser.add_subparsers(dest="source", required=True)
    g = sub.add_parser("gengram-megatron", help="the released Gengram checkpoint (Megatron `torch` format)")
    g.add_argument("path", help="checkpoint directory (mp_rank_00_*/model_optim_rng.pt, or iter_*/...) or one file")
    g.add_argument("--config", required=True, help="the model's config, e.g. configs/models/gengram-10b.yaml")
    g.add_argument("--out", required=True, help="output checkpoint directory (weights only)")
    g.add_argument("overrides", nargs="*", help="dotted config overrides")
    args, extra = parser.parse_known_args(argv)  # overrides may follow the options too
    unknown = [a for a in extra if "=" not in a or a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    from nucleotron.configs import ConfigError

    try:
        out = import_gengram(args.path, args.config, args.out, [*args.overrides, *extra])
    except (CheckpointError, ConfigError) as err:
        print(f"nucleotron import gengram-megatron: {err}", file=sys.stderr)
        return 2
    print(f"imported {args.path} -> {out} (weights only; export with `nucleotron export hf {out} OUT/`)")
    return 0
