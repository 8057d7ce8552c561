"""The pack directory's manifest.json: the contract between `data prep` and training (blend, vocab, EOD id).

Training reads it with `load_manifest(dir)`; a format_version it does not know is an error, not a guess.

Blend formula: megatron's BlendedDataset draws whole samples (seq_len + 1 tokens) with probability proportional to
the weights, so a group's expected token share equals its weight share. For each split, the weight of dataset d of
group g is W(g) * tokens(d) / tokens(g), W the group's normalised declared weight (`data prep --group-weights`;
default human 0.5, nonhuman 0.5), so each group's weights sum to W(g) and its expected share is exactly W(g) whatever
the on-disk sizes; a group small on disk is simply repeated more often (the manifest reports the on-disk tokens).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

from nucleotron.configs.files import write_json_atomic

from .errors import DataPrepError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
PACK_KIND = "nucleotron.pack"     # manifest["kind"]: what `data prep --overwrite` may replace (see is_pack)


@dataclass(frozen=True)
class Blend:
    prefixes: List[str]        # relative to the pack directory
    weights: List[float]
    groups: List[str]          # group of each prefix
    expected_token_share: Dict[str, float]
    on_disk_tokens: Dict[str, int]


@dataclass(frozen=True)
class Manifest:
    directory: str
    format_version: int
    seq_len: int
    vocab: Dict[str, int]
    vocab_size: int
    eod: int
    pad: int
    strand: dict
    blend: Dict[str, Blend]    # split -> blend
    soft_mask_bit: Optional[int]   # set on soft-masked bases' ids (`data prep --soft-mask`), else None
    raw: dict = field(repr=False)

    def blend_paths(self, split: str) -> Tuple[List[str], List[float]]:
        """(absolute dataset prefixes, weights) for megatron's BlendedMegatronDatasetConfig."""
        if split not in self.blend:
            raise DataPrepError(f"{self.directory}: no {split!r} split in the pack (has {sorted(self.blend)})")
        entry = self.blend[split]
        return [os.path.join(self.directory, p) for p in entry.prefixes], list(entry.weights)

    @property
    def group_weights(self) -> Dict[str, float]:
        """Each group's declared token share (sums to 1): the manifest's `group_weights`, or for packs made with the
        default mix (which record none) the train blend's expected shares (human 0.5, nonhuman 0.5)."""
        declared = self.raw.get("group_weights")
        if declared:
            return {g: float(w) for g, w in declared.items()}
        split = "train" if "train" in self.blend else next(iter(self.blend))
        return dict(self.blend[split].expected_token_share)

    @property
    def groups(self) -> List[str]:
        """The groups the blends mix (human, nonhuman by default; one, three... with --group-weights), in blend
        order: the one source for their names."""
        names: List[str] = []
        for entry in self.blend.values():
            names += [g for g in entry.groups if g not in names]
        return names


def blend_weights(dataset_tokens: Dict[str, int], dataset_group: Dict[str, str],
                  group_weights: Optional[Mapping[str, float]] = None) -> Dict[str, float]:
    """Weights giving each group g an expected token share of exactly group_weights[g] (normalised shares; default
    0.5 for every group, the 1:1 mix), see the module docstring."""
    group_tokens: Dict[str, int] = {}
    for name, count in dataset_tokens.items():
        group_tokens[dataset_group[name]] = group_tokens.get(dataset_group[name], 0) + count
    share = (lambda g: 0.5) if group_weights is None else group_weights.__getitem__
    return {name: share(dataset_group[name]) * count / group_tokens[dataset_group[name]]
            for name, count in dataset_tokens.items()}


def write_manifest(directory: str, content: dict) -> dict:
    """Write manifest.json (atomically, fsynced) with the format version and pack marker first; returns it."""
    content = {"format_version": FORMAT_VERSION, "kind": PACK_KIND, **content}
    write_json_atomic(os.path.join(directory, MANIFEST_NAME), content)
    return content


def is_pack(directory: str) -> bool:
    """Whether `directory` holds a pack made by `data prep`: its manifest says kind=nucleotron.pack, or (packs made
    before the marker) has a format_version and a blend."""
    try:
        with open(os.path.join(directory, MANIFEST_NAME)) as handle:
            raw = json.load(handle)
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and (raw.get("kind") == PACK_KIND or
                                      ("format_version" in raw and isinstance(raw.get("blend"), dict)))


def load_manifest(directory: str) -> Manifest:
    path = os.path.join(directory, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise DataPrepError(f"{path} not found; is {directory} a pack made by `nucleotron data prep`?")
    try:
        with open(path) as handle:
            raw = json.load(handle)
    except ValueError as err:
        raise DataPrepError(f"{path}: not valid JSON ({err}); re-run `nucleotron data prep` to rebuild the pack") \
            from None
    if not isinstance(raw, dict):
        raise DataPrepError(f"{path}: not a pack manifest (a JSON object); re-run `nucleotron data prep`")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise DataPrepError(f"{path}: format_version {version!r} is not supported (this code reads "
                            f"{FORMAT_VERSION}); re-run `nucleotron data prep` or update nucleotron")
    try:
        declared = raw.get("group_weights")
        if declared is not None and not (isinstance(declared, dict) and declared and all(
                isinstance(w, (int, float)) and math.isfinite(w) and w > 0 for w in declared.values())):
            raise ValueError(f"group_weights {declared!r} is not a map of group -> positive weight")
        blend = {split: Blend(prefixes=list(b["prefixes"]), weights=[float(w) for w in b["weights"]],
                              groups=list(b["groups"]), expected_token_share=dict(b["expected_token_share"]),
                              on_disk_tokens={k: int(v) for k, v in b["on_disk_tokens"].items()})
                 for split, b in raw["blend"].items()}
        return Manifest(directory=os.path.abspath(directory), format_version=version, seq_len=int(raw["seq_len"]),
                        vocab={k: int(v) for k, v in raw["vocab"].items()}, vocab_size=int(raw["vocab_size"]),
                        eod=int(raw["eod"]), pad=int(raw["pad"]), strand=dict(raw["strand"]), blend=blend,
                        soft_mask_bit=int(raw["soft_mask"]["bit"]) if raw.get("soft_mask") else None, raw=raw)
    except (KeyError, TypeError, ValueError) as err:
        raise DataPrepError(f"{path}: malformed manifest ({type(err).__name__}: {err})") from None
