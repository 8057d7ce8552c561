"""Which groups a pack mixes and in what token shares: `data prep --group-weights NAME=W,...`.

The paper's recipe mixes two groups 1:1 (human, nonhuman), and that stays the default when nothing is declared.
Other recipes name their own groups: dnaHNet trains on one prokaryote group (GTDB), others on three or more with
chosen shares. The declared weights are normalised to sum to 1; each group's datasets then get blend weights whose
sum is the group's share (manifest.blend_weights), so the expected token share under megatron's blend is exactly the
declared one whatever the on-disk sizes. The manifest records declared weights under `group_weights`; a pack made
with the default records none, so its manifest is byte-identical to what earlier versions wrote.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Dict, Mapping, Sequence

from .errors import DataPrepError

SETTING = "--group-weights"
DEFAULT_WEIGHTS = {"human": 0.5, "nonhuman": 0.5}
GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")   # becomes part of file names: GROUP_SPLIT.bin


@dataclass(frozen=True)
class GroupWeights:
    """Normalised token share per group, in declaration order (the packs' and blends' order)."""

    weights: Dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    declared: bool = False        # given by the user: recorded in the manifest

    @property
    def groups(self) -> Sequence[str]:
        return tuple(self.weights)

    def describe(self) -> str:
        return ", ".join(f"{g}={w:g}" for g, w in self.weights.items())


DEFAULT = GroupWeights()


def check_group_name(name: str, where: str) -> None:
    if not GROUP_NAME.match(name):
        raise DataPrepError(f"{where}: group name {name!r} is not allowed; use letters, digits, '_', '.', '-' "
                            f"(starting with a letter or digit, at most 64 characters): it names the pack's files")


def parse_group_weights(text: str) -> Dict[str, float]:
    """'prokaryote=1' or 'a=0.5,b=0.3,c=0.2' -> {name: weight} as written (validated by `declare`)."""
    raw: Dict[str, float] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = (s.strip() for s in item.partition("="))
        if not sep or not name or not value:
            raise DataPrepError(f"{SETTING} {text!r}: entry {item!r} is not NAME=WEIGHT (e.g. {SETTING} "
                                f"human=0.5,nonhuman=0.5 or {SETTING} prokaryote=1)")
        if name in raw:
            raise DataPrepError(f"{SETTING} {text!r}: group {name!r} is given twice; give each group once")
        try:
            raw[name] = float(value)
        except ValueError:
            raise DataPrepError(f"{SETTING} {text!r}: weight {value!r} of group {name!r} is not a number") from None
    if not raw:
        raise DataPrepError(f"{SETTING} {text!r} names no group; give NAME=WEIGHT pairs, e.g. prokaryote=1")
    return raw


def declare(raw: Mapping[str, float]) -> GroupWeights:
    """Validate user weights (names, positive and finite) and normalise them to sum to 1."""
    if not raw:
        raise DataPrepError(f"{SETTING} names no group; give NAME=WEIGHT pairs, e.g. prokaryote=1")
    for name, weight in raw.items():
        check_group_name(name, SETTING)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight) \
                or weight <= 0:
            raise DataPrepError(f"{SETTING}: weight {weight!r} of group {name!r} must be a finite number > 0 "
                                f"(weights are relative token shares, normalised to sum to 1)")
    total = sum(float(w) for w in raw.values())
    if not math.isfinite(total):
        raise DataPrepError(f"{SETTING}: the weights sum to {total!r}; use smaller numbers (only ratios matter)")
    return GroupWeights({name: float(w) / total for name, w in raw.items()}, declared=True)


def check_sources(sources, weights: GroupWeights, tsv_path: str) -> None:
    """Every declared group has at least one row of the sources table (a row's group not among them is refused by
    sources.read_sources with its line)."""
    present = {s.group for s in sources}
    for group in weights.groups:
        if group not in present:
            how = f"{SETTING} names" if weights.declared else "the default 1:1 mix needs"
            raise DataPrepError(f"{how} group {group!r} but no row of {tsv_path} has it (groups there: "
                                f"{', '.join(sorted(present))}); add its FASTA files or give {SETTING} only for "
                                f"the groups you have, e.g. {SETTING} "
                                + ",".join(f"{g}=1" for g in sorted(present)))
