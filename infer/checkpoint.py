"""Read a trained model out of a Nucleotron checkpoint on one process, whatever TP/PP/EP layout wrote it.

A checkpoint directory holds a megatron dist_checkpointing save whose "model" entry is model.sharded_state_dict()
(plus "optimizer", which inference skips) and nucleotron.json with the resolved config ("config_yaml") and "step".
Loading builds the same model at TP=PP=EP=1 and asks dist_checkpointing for its sharded state: megatron reassembles
the full tensors from any saved layout. This is the one place infer/ touches megatron's checkpoint format.

H-Net checkpoints (model.arch=hnet) hold DeepSpeed's files instead (train/engines/deepspeed.py): `hnet_state_dict`
reads the full fp32 weights from them (ZeRO 0-2: the module file; ZeRO-3: the fp32 partitions, reassembled by
DeepSpeed's zero_to_fp32), with torch.load restricted to weights (a checkpoint cannot run code).
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Dict, Iterator, Optional

import torch
from omegaconf import OmegaConf

from nucleotron.configs import NucleotronConfig

STATE_FILE = "nucleotron.json"


class CheckpointError(ValueError):
    """A path that is not a usable checkpoint; the message says what to pass instead."""


@dataclass
class Checkpoint:
    directory: str
    step: int
    cfg: NucleotronConfig
    vocab: Dict[str, int]          # token -> id of the packs the model was trained on
    kind: str                      # "training" (trainer save) or "weights" (imported, no optimizer)
    config_yaml: str               # the resolved config as saved


def resolve_checkpoint(path: str) -> str:
    """RUN_DIR (its newest complete checkpoint), RUN_DIR/checkpoints, or one checkpoint directory -> that directory."""
    from nucleotron.train.checkpoint import find_resumable

    path = os.path.abspath(path)
    if os.path.isfile(os.path.join(path, STATE_FILE)):
        return path
    for root in (os.path.join(path, "checkpoints"), path):
        if os.path.isdir(root):
            try:  # inference only reads: never move a checkpoint that fails verification aside
                found = find_resumable(root, reject=False)
            except TypeError:
                found = find_resumable(root)
            found = found[0] if isinstance(found, tuple) else found  # (directory, skipped) in newer trainers
            if found is not None:
                return found
    raise CheckpointError(f"{path}: no complete checkpoint found (expected RUN_DIR, RUN_DIR/checkpoints or a "
                          f"checkpoint directory holding {STATE_FILE}); train first or pass another path")


def config_from_yaml(text: str, source: str) -> NucleotronConfig:
    """The saved resolved config as the typed tree, adapted to one process and fp32 (inference layout)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(NucleotronConfig), OmegaConf.create(text))
        cfg: NucleotronConfig = OmegaConf.to_object(merged)
    except Exception as err:  # OmegaConf raises several unrelated types for bad content
        raise CheckpointError(f"{source}: config_yaml does not match this version's config schema ({err})") from None
    cfg.parallel.tensor = cfg.parallel.pipeline = cfg.parallel.expert = cfg.parallel.context = 1
    cfg.parallel.sequence_parallel = False
    cfg.model.recompute = "none"
    cfg.model.attention_backend = "sdpa"
    cfg.train.precision = "fp32"
    return cfg


def checkpoint_vocab(record: dict, cfg: NucleotronConfig) -> Dict[str, int]:
    """The token ids the model was trained with: recorded in the checkpoint (imported weights), else the pack
    manifest the config names, else the fixed ids `data prep` writes (nucleotron.data_prep.tokens.VOCAB)."""
    if record.get("vocab"):
        return {k: int(v) for k, v in record["vocab"].items()}
    from nucleotron.data_prep.manifest import load_manifest

    if cfg.data.packs and os.path.isfile(os.path.join(cfg.data.packs, "manifest.json")):
        return dict(load_manifest(cfg.data.packs).vocab)
    from nucleotron.data_prep.tokens import VOCAB

    return dict(VOCAB)


def read_checkpoint(path: str) -> Checkpoint:
    directory = resolve_checkpoint(path)
    with open(os.path.join(directory, STATE_FILE)) as handle:
        record = json.load(handle)
    if not record.get("config_yaml"):
        raise CheckpointError(f"{directory}/{STATE_FILE} has no config_yaml; re-save it with this nucleotron version")
    cfg = config_from_yaml(record["config_yaml"], f"{directory}/{STATE_FILE}")
    return Checkpoint(directory=directory, step=int(record.get("step", 0)), cfg=cfg,
                      vocab=checkpoint_vocab(record, cfg), kind=record.get("kind", "training"),
                      config_yaml=record["config_yaml"])


@contextlib.contextmanager
def single_process_megatron(cfg: NucleotronConfig) -> Iterator[None]:
    """megatron's parallel state for one process (gloo on CPU), torn down afterwards so the caller (a test, a
    notebook) is left as it was."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from nucleotron.train.parallel import init_distributed

    started = not dist.is_initialized()
    if started:
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):  # one process, whatever launched us
            os.environ.pop(key, None)
    init_distributed(cfg.parallel, cfg.run.seed)
    try:
        yield
    finally:
        parallel_state.destroy_model_parallel()
        if started and dist.is_initialized():
            dist.destroy_process_group()


def build_model(cfg: NucleotronConfig, vocab: Dict[str, int]):
    """The megatron-core model at TP=PP=1 (call inside single_process_megatron)."""
    from nucleotron.model.gpt import build_gpt_model

    return build_gpt_model(cfg, vocab=vocab)


def load_weights(model, directory: str) -> None:
    """Strict load of the "model" entry of a dist_checkpointing save into `model`; the optimizer is not read."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    # megatron's words: "unexpected" = asked for but not saved (raise), "missing" = saved but not asked for (the
    # optimizer state: ignored)
    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, directory,
                                     strict=StrictHandling.RAISE_UNEXPECTED)
    model.load_state_dict(loaded["model"], strict=True)


def is_hnet(cfg: NucleotronConfig) -> bool:
    return cfg.model.arch == "hnet"


def require_gpt(ckpt: Checkpoint, what: str) -> None:
    """Refuse an H-Net checkpoint where only GPT-family models are supported, saying what does read it."""
    if is_hnet(ckpt.cfg):
        raise CheckpointError(f"{ckpt.directory} holds an H-Net model (model.arch=hnet, DeepSpeed checkpoint); {what} "
                              f"reads GPT-family models only. `nucleotron score` scores H-Net models (sequences and "
                              f"variants, --mode parallel|step, --boundaries)")


def hnet_state_dict(ckpt: Checkpoint) -> Dict[str, torch.Tensor]:
    """{parameter name: full fp32 tensor on CPU} of an H-Net checkpoint written by the DeepSpeed engine."""
    from nucleotron.train.engines.deepspeed import CHECKPOINT_TAG
    from nucleotron.train.safe_load import deepspeed_weights_only_loading

    folder = os.path.join(ckpt.directory, CHECKPOINT_TAG)
    zero3 = ckpt.cfg.parallel.zero_stage >= 3    # the module file holds placeholders: gather the fp32 partitions
    name = "zero_pp_rank_0_mp_rank_00_model_states.pt" if zero3 else "mp_rank_00_model_states.pt"
    if not os.path.isfile(os.path.join(folder, name)):
        raise CheckpointError(f"{ckpt.directory}: an H-Net checkpoint (ZeRO-{ckpt.cfg.parallel.zero_stage}) without "
                              f"{CHECKPOINT_TAG}/{name} (DeepSpeed's model file); pass a complete checkpoint written "
                              f"by training")
    with deepspeed_weights_only_loading():
        if zero3:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            state = get_fp32_state_dict_from_zero_checkpoint(ckpt.directory, tag=CHECKPOINT_TAG)
        else:
            state = torch.load(os.path.join(folder, name), map_location="cpu", weights_only=True)["module"]
    return {k: v.detach().float().clone() for k, v in state.items() if isinstance(v, torch.Tensor)}


def build_hnet(ckpt: Checkpoint, state: Optional[Dict[str, torch.Tensor]] = None):
    """The HNetLM of the checkpoint's config (fp32, CPU, eval mode), with its weights (strict: every name must
    match)."""
    from nucleotron.model.hnet import HNetLM

    cfg = ckpt.cfg.model
    model = HNetLM(cfg.hnet, cfg.vocab_size, cfg.norm_eps)
    state = hnet_state_dict(ckpt) if state is None else state
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{ckpt.directory}: the saved H-Net weights do not fit the model of its config "
                              f"({str(err).splitlines()[0]}...); was the checkpoint written by another version?") \
            from None
    return model.eval()


def megatron_state_dict(path, device: Optional[str] = None) -> tuple:
    """(Checkpoint, {megatron parameter name: full fp32 tensor}) read on one process, parallel state torn down;
    `path` may be a Checkpoint already read (its files are then not hashed again)."""
    ckpt = path if isinstance(path, Checkpoint) else read_checkpoint(path)
    require_gpt(ckpt, "this command (megatron weights, Hugging Face export)")
    with single_process_megatron(ckpt.cfg):
        model = build_model(ckpt.cfg, ckpt.vocab)
        load_weights(model, ckpt.directory)
        state = {k: v.detach().to(device or "cpu").clone() for k, v in model.state_dict().items()
                 if isinstance(v, torch.Tensor) and not k.endswith("_extra_state")}
    return ckpt, state


def save_weights(model, cfg: NucleotronConfig, vocab: Dict[str, int], out: str, step: int = 0) -> str:
    """A weights-only checkpoint (no optimizer): `checkpoint.init_from=OUT` starts training from it and every infer
    command reads it. Written as OUT.tmp, renamed when complete (call inside single_process_megatron)."""
    import shutil

    from nucleotron.configs import to_yaml
    from nucleotron.configs.files import write_json_atomic
    from nucleotron.train.checkpoint import save_sharded

    out = os.path.abspath(out.rstrip("/"))
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_sharded({"model": model.sharded_state_dict()}, tmp)
    write_json_atomic(os.path.join(tmp, STATE_FILE), {"format_version": 1, "kind": "weights", "step": step,
                                                      "config_yaml": to_yaml(cfg), "vocab": vocab})
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
