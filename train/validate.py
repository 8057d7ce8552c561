"""Validation: loss and bits per base on each group's fixed held-out set, and over all groups together.

The sets are the pack's valid split, one per group the manifest names (e.g. human and non-human, so the 1:1 mix
is reported on both sides), each a fixed list of samples split across data-parallel ranks.
"""
from __future__ import annotations

import hashlib
from typing import Dict

import torch

from .data import fixed_micro_batches, stack
from .loss import LossSums


class Validator:
    def __init__(self, datasets: Dict[str, object], num_samples: int, micro_batch_size: int, dp_rank: int,
                 dp_size: int):
        self.datasets = datasets
        self.num_samples = num_samples
        self.batches = {group: fixed_micro_batches(dataset, num_samples, micro_batch_size, dp_rank, dp_size)
                        for group, dataset in datasets.items()}

    def __bool__(self) -> bool:
        return bool(self.datasets)

    def fingerprint(self) -> str:
        """12 hex digits of the sha256 of every group's validation tokens: equal in two runs' logs when both were
        scored on the same held-out samples."""
        digest = hashlib.sha256()
        for group, dataset in self.datasets.items():
            digest.update(group.encode())
            for index in range(self.num_samples):
                digest.update(dataset[index]["tokens"].numpy().tobytes())
        return digest.hexdigest()[:12]

    def run(self, engine, device: torch.device) -> Dict[str, float]:
        """{"<group>/loss", "<group>/bits_per_base", ..., "loss", "bits_per_base"} (collective)."""
        result: Dict[str, float] = {}
        total = LossSums()
        for group, dataset in self.datasets.items():
            sums = engine.evaluate([stack(dataset, b) for b in self.batches[group]]).all_reduced(device)
            result[f"{group}/loss"] = sums.mean_loss
            result[f"{group}/bits_per_base"] = sums.bits_per_base
            total = total + sums
        if self.datasets:
            result["loss"] = total.mean_loss
            result["bits_per_base"] = total.bits_per_base
        return result
