"""A FOCUS model from a Nucleotron checkpoint plus an adapter file, and the adapter file itself.

The adapter file is safetensors: the trained tensors (summary embedding, adapter projections) and, in its metadata,
the focus config it was trained with (k, visibility rule, adapted layers and projections must match to load it).
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict
from typing import Iterator, List, Optional, Sequence, Tuple

from omegaconf import OmegaConf

from nucleotron.configs import ConfigError, NucleotronConfig, resolve_config_path, validate
from nucleotron.configs.files import write_atomic
from nucleotron.configs.schema import FocusConfig

CONFIG_KEY = "nucleotron_focus_config"
BASE_KEY = "nucleotron_focus_base"  # {"path", "sha256", "step"} of the frozen checkpoint (`focus train` files)
RUN_ADAPTER = os.path.join("focus", "adapter.safetensors")  # inside a `focus train` checkpoint directory


def save_adapter(model, path: str, base: Optional[dict] = None) -> None:
    """The trained tensors and their focus config; `base` names the frozen checkpoint they belong to (never its
    tensors)."""
    from safetensors.torch import save

    state = {name: t.contiguous() for name, t in model.adapter_state_dict().items()}
    metadata = {CONFIG_KEY: json.dumps(asdict(model.cfg))}
    if base is not None:
        metadata[BASE_KEY] = json.dumps(base)
    write_atomic(path, save(state, metadata=metadata))


def resolve_adapter(path: str) -> str:
    """An adapter file, or a `nucleotron focus train` run directory / checkpoint directory -> its adapter file (the
    newest complete checkpoint of a run)."""
    if not os.path.isdir(path):
        return path
    from .checkpoint import CheckpointError, resolve_checkpoint

    try:
        directory = resolve_checkpoint(path)
    except CheckpointError as err:
        raise ConfigError(f"--adapter {path}: {err}") from None
    found = os.path.join(directory, RUN_ADAPTER)
    if not os.path.isfile(found):
        raise ConfigError(f"--adapter {path}: {directory} holds no {RUN_ADAPTER}, so it is not a checkpoint of "
                          f"`nucleotron focus train`; pass that run's directory or an adapter .safetensors file")
    return found


def adapter_base(path: str) -> Optional[dict]:
    """The frozen checkpoint an adapter file was trained on ({"path", "sha256", "step"}), if it records one."""
    from safetensors.torch import safe_open

    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata() or {}
    return json.loads(metadata[BASE_KEY]) if BASE_KEY in metadata else None


def read_adapter(path: str) -> Tuple[dict, FocusConfig]:
    """(tensors, the focus config they were trained with); a clear error for anything else. `path` may also be a
    `nucleotron focus train` run or checkpoint directory."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = resolve_adapter(path)
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(path)
    except (OSError, SafetensorError) as err:
        raise ConfigError(f"{path}: not a readable FOCUS adapter file ({err}); pass the .safetensors file "
                          f"written by `nucleotron focus train`") from err
    if CONFIG_KEY not in metadata:
        raise ConfigError(f"{path}: safetensors file without '{CONFIG_KEY}' metadata, so not a FOCUS adapter; "
                          f"pass the file written by `nucleotron focus train`")
    return tensors, FocusConfig(**json.loads(metadata[CONFIG_KEY]))


def focus_config(cfg: NucleotronConfig, adapter_cfg: Optional[FocusConfig], overrides: Sequence[str],
                 source: str, focus_yaml: Optional[str] = None) -> NucleotronConfig:
    """The checkpoint's config with, in this order, the adapter's focus settings, a YAML file's `focus:` section
    (configs/focus/*.yaml) and dotted focus.KEY=VALUE overrides."""
    for item in overrides:
        if not item.startswith("focus.") or "=" not in item:
            raise ConfigError(f"{item!r}: only focus.KEY=VALUE overrides are accepted here")
    merged = OmegaConf.structured(cfg)
    if adapter_cfg is not None:
        merged.focus = OmegaConf.structured(adapter_cfg)
    if focus_yaml is not None:
        extra = OmegaConf.load(resolve_config_path(focus_yaml))
        if set(extra.keys()) != {"focus"}:
            raise ConfigError(f"{focus_yaml}: a FOCUS config holds one top-level key, 'focus' (found "
                              f"{sorted(extra.keys())}); see configs/focus/paper.yaml")
        merged = OmegaConf.merge(merged, extra)
    try:
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        resolved = OmegaConf.to_object(merged)
    except Exception as err:  # OmegaConf: unknown key or wrong type
        raise ConfigError(f"{source}: {err}".splitlines()[0]) from err
    return validate(resolved, source)


@contextlib.contextmanager
def open_focus(checkpoint: str, adapter: Optional[str] = None, overrides: Sequence[str] = (),
               focus_yaml: Optional[str] = None) -> Iterator[tuple]:
    """(FocusModel, vocab, config) on one process, megatron's parallel state alive while the block runs."""
    from nucleotron.model.focus import FocusModel

    from .checkpoint import build_model, load_weights, read_checkpoint, single_process_megatron

    ckpt = read_checkpoint(checkpoint)
    tensors, adapter_cfg = read_adapter(adapter) if adapter else (None, None)
    cfg = focus_config(ckpt.cfg, adapter_cfg, overrides, adapter or ckpt.directory, focus_yaml)
    with single_process_megatron(cfg):
        base = build_model(cfg, ckpt.vocab)
        load_weights(base, ckpt.directory)
        model = FocusModel(base, cfg.focus)
        if tensors is not None:
            model.load_adapter_state_dict(tensors)
        yield model, ckpt.vocab, cfg


class SequenceError(ValueError):
    """A sequence file that cannot be scored; the message names the file and record."""


def read_fasta(path: str) -> Tuple[List[str], List[str]]:
    """(names, sequences) of a FASTA file (.gz too)."""
    import gzip

    opener = gzip.open if path.endswith(".gz") else open
    names, chunks = [], []
    try:
        with opener(path, "rt") as handle:
            for line in handle:
                line = line.strip()
                if line.startswith(">"):
                    names.append(line[1:].split()[0] if line[1:].split() else f"record{len(names) + 1}")
                    chunks.append([])
                elif line:
                    if not chunks:
                        raise SequenceError(f"{path}: sequence before the first '>' header; is this a FASTA file?")
                    chunks[-1].append(line)
    except OSError as err:
        raise SequenceError(f"{path}: cannot read ({err})") from err
    if not names:
        raise SequenceError(f"{path}: no FASTA records ('>name' lines) found")
    return names, ["".join(c) for c in chunks]


def encode_records(path: str, vocab: dict) -> Tuple[List[str], list]:
    """(names, [int64 arrays]) of a FASTA file, each preceded by EOD as the uncompressed scorer does. Lower case
    reads as upper case; IUPAC ambiguity codes read as N."""
    import numpy as np

    table = np.full(256, -1, dtype=np.int64)
    for code in "ACGTNRYSWKMBDHV":
        token = vocab[code] if code in "ACGTN" else vocab["N"]
        table[ord(code)] = table[ord(code.lower())] = token
    names, sequences = read_fasta(path)
    out = []
    for name, sequence in zip(names, sequences):
        if not sequence:
            raise SequenceError(f"{path} record {name!r} is empty; remove it")
        ids = table[np.frombuffer(sequence.encode("ascii", errors="replace"), dtype=np.uint8)]
        bad = np.flatnonzero(ids < 0)
        if bad.size:
            raise SequenceError(f"{path} record {name!r}: character {sequence[bad[0]]!r} at position {bad[0] + 1} "
                                f"is not a DNA base (A, C, G, T, N or an IUPAC code)")
        out.append(np.concatenate([[vocab["EOD"]], ids]))
    return names, out
