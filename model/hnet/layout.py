"""The official H-Net layout DSL: `[encoder, [inner...], decoder]` with sub-stacks written as letter+count runs.

    "m4"    four Mamba-2 blocks without MLP        "M2"  two Mamba-2 blocks with a SwiGLU MLP
    "t1"    one attention block without MLP        "T9"  nine attention blocks with a SwiGLU MLP
    ["m4", ["T1m4", ["T9"], "m4T1"], "m4"]           a 2-stage H-Net (dnaHNet): stage 0 outer, stage 2 innermost

A stage is either `[encoder, inner, decoder]` (it routes, chunks and dechunks) or `[main]` (the innermost stage).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, List, Sequence, Tuple

_RUN = re.compile(r"([mMtT])(\d+)")


@dataclass(frozen=True)
class BlockSpec:
    mixer: str  # "mamba2" | "attention"
    mlp: bool


def parse_stack(text: str, where: str = "model.hnet.layout") -> List[BlockSpec]:
    """'T1m4' -> [attention+MLP, mamba x4]; anything but m/M/t/T runs with positive counts is an error."""
    if not isinstance(text, str) or not text or _RUN.sub("", text):
        raise ValueError(f"{where}: {text!r} is not a block stack; write runs like 'm4', 'T1m4' "
                         f"(m/M = Mamba-2, t/T = attention; upper case adds a SwiGLU MLP)")
    blocks: List[BlockSpec] = []
    for letter, count in _RUN.findall(text):
        if int(count) < 1:
            raise ValueError(f"{where}: {text!r} has a run of {count} blocks; counts must be positive")
        blocks += [BlockSpec("mamba2" if letter in "mM" else "attention", letter.isupper())] * int(count)
    return blocks


def stage_layouts(layout: Any) -> List[Tuple[str, ...]]:
    """Per stage, outermost first: (encoder, decoder) for routing stages, then (main,) for the innermost one."""
    stages: List[Tuple[str, ...]] = []
    node, path = layout, "model.hnet.layout"
    while True:
        if not isinstance(node, Sequence) or isinstance(node, str) or len(node) not in (1, 3):
            raise ValueError(f"{path}: expected [encoder, [inner...], decoder] or [main], got {node!r}")
        if len(node) == 1:
            parse_stack(node[0], f"{path}[0]")
            stages.append((node[0],))
            return stages
        encoder, inner, decoder = node
        parse_stack(encoder, f"{path}[0]")
        parse_stack(decoder, f"{path}[2]")
        stages.append((encoder, decoder))
        node, path = inner, f"{path}[1]"


def num_routing_stages(layout: Any) -> int:
    """How many chunking stages (= target ratios needed); the innermost main network does not route."""
    return len(stage_layouts(layout)) - 1
