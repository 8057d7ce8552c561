"""Where each record's documents go: straight into its pack's data file, at an offset agreed between workers.

A pack (one per group and split) is its member records' documents in source/record order. Workers write each record
at its final offset in a data file in the work dir, so finishing the pack is a rename, not a copy. The offset of a
record is the sum of the sizes of the records before it in its pack; a worker learns its own size after cutting
(before writing), publishes it in a small shared array (`sizes.npy`, memory-mapped by every worker) and waits until
every earlier member has published. Records are handed out in that same order, so the earliest unfinished record
never waits and there is no deadlock; a wait lasts at most the tail of the previous record's cutting.

The layout directory is named after a hash of the placement (which record goes to which pack, by source content):
a resumed run with the same sources and splits reuses every finished record, any change starts a fresh layout.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

from .workdir import read_json
from .workers import raise_if_stopping

UNKNOWN = -1


@dataclass(frozen=True)
class Slot:
    prefix: str        # the pack, e.g. "human_train"
    index: int         # position in sizes.npy, where each pack's members (in source/record order) form one block
    first: int         # index of the pack's first member


class PackLayout:
    def __init__(self, job_dir: str, packs: Dict[str, List[Tuple[int, int]]], identity: list):
        digest = hashlib.sha256(json.dumps([identity, packs], sort_keys=True).encode()).hexdigest()[:16]
        self.directory = os.path.join(job_dir, f"layout-{digest}")
        self.packs = packs
        self.slots: Dict[Tuple[int, int], Slot] = {}
        for prefix, group in packs.items():                        # each pack's members: one block of sizes.npy
            first = len(self.slots)
            for member in group:
                self.slots[member] = Slot(prefix, len(self.slots), first)
        self.sizes_path = os.path.join(self.directory, "sizes.npy")

    def data_path(self, prefix: str) -> str:
        return os.path.join(self.directory, prefix + ".bin")

    def record_prefix(self, member: Tuple[int, int]) -> str:
        """Path prefix of a record's fragment table (.frag.npy) and done marker (.done)."""
        return os.path.join(self.directory, f"s{member[0]:04d}r{member[1]:07d}")

    def prepare(self) -> Dict[Tuple[int, int], dict]:
        """Create the data files and sizes.npy; return the done markers still valid (their data file survived)."""
        os.makedirs(self.directory, exist_ok=True)
        done = {}
        for prefix, group in self.packs.items():
            fresh = not os.path.exists(self.data_path(prefix))   # new, or moved into a pack before a crash
            if fresh:
                open(self.data_path(prefix), "wb").close()
            for member in group:
                marker = self.record_prefix(member) + ".done"
                if fresh and os.path.exists(marker):              # its documents left with the old data file
                    os.remove(marker)
                elif os.path.exists(marker):
                    done[member] = read_json(marker)
        sizes = np.full(len(self.slots), UNKNOWN, dtype=np.int64)
        for member, marker in done.items():
            sizes[self.slots[member].index] = marker["tokens"]
        np.save(self.sizes_path, sizes)
        return done


def claim_offset(sizes_path: str, slot: Slot, size: int) -> int:
    """Publish this record's size; return its offset once every earlier record of its pack has published."""
    sizes = np.load(sizes_path, mmap_mode="r+")       # mapped afresh per record (~0.1 ms): never a stale map
    sizes[slot.index] = size
    known, offset = slot.first, 0
    while known < slot.index:
        pending = sizes[known:slot.index]
        unknown = np.flatnonzero(pending == UNKNOWN)
        ready = int(unknown[0]) if len(unknown) else len(pending)
        offset += int(pending[:ready].sum())
        known += ready
        if known < slot.index:
            raise_if_stopping()               # the record we wait for may have failed
            time.sleep(0.0005)
    return offset
