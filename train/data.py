"""Batches from token packs: megatron-core's GPTDataset over the pack's 1:1 blend, read in a resumable order.

The data position is one number, `consumed_samples`: the global batch of step s is samples [s*G, (s+1)*G) of the
blended dataset (megatron shuffles inside it with `run.seed`), and data-parallel rank r reads its contiguous slice.
Nothing here draws from the global RNGs (the DataLoader gets a private generator), so restoring the RNG states and
`consumed_samples` after a preemption replays exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Iterator, List

import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

from nucleotron.data_prep.manifest import Manifest

@dataclass(frozen=True)
class PackTokenizer:
    """What megatron's GPTDataset needs of a tokenizer: packs are already token ids, so only the special ids."""

    vocab_size: int
    eod: int
    pad: int

    @property
    def unique_identifiers(self) -> Dict[str, int]:
        return {"class": "PackTokenizer", "vocab_size": self.vocab_size, "eod": self.eod, "pad": self.pad}


def _dataset_config(manifest: Manifest, blend_per_split, seed: int, cache_dir: str) -> GPTDatasetConfig:
    return GPTDatasetConfig(
        random_seed=seed,
        sequence_length=manifest.seq_len,
        blend_per_split=blend_per_split,
        path_to_cache=cache_dir,  # index files built once by rank 0, then loaded by every rank and every restart
        tokenizer=PackTokenizer(manifest.vocab_size, manifest.eod, manifest.pad),
        reset_position_ids=False,
        reset_attention_mask=False,  # the paper's attention crosses EOD inside a sample
        eod_mask_loss=False,
        create_attention_mask=False,  # causal attention is the mask type; no [s, s] tensor per sample
        mid_level_dataset_surplus=0.01,
    )


def build_train_dataset(manifest: Manifest, num_samples: int, seed: int, cache_dir: str,
                        soft_masked_loss_weight: float = 1.0):
    """The training split as megatron's blend of the pack's datasets with the manifest's 1:1 weights; a soft-masked
    pack's targets get `soft_masked_loss_weight` in the loss mask."""
    blend = manifest.blend_paths("train")
    config = _dataset_config(manifest, [blend, None, None], seed, cache_dir)
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [num_samples, None, None], lambda: True, config).build()
    return _without_soft_mask_bits(train, manifest, soft_masked_loss_weight)


VALIDATION_SEED = 0  # megatron draws the valid split's samples with this seed, not run.seed


def build_valid_datasets(manifest: Manifest, num_samples: int, cache_dir: str) -> Dict[str, object]:
    """One fixed validation set per group the manifest names (human, non-human...), each reported on its own.

    The samples are the same for every run of the pack whatever its run.seed, so seeds and arms of a comparison
    are scored on one set and their spread is the training's, not the draw of held-out fragments."""
    if "valid" not in manifest.blend:
        return {}
    entry = manifest.blend["valid"]
    datasets = {}
    for group in dict.fromkeys(entry.groups):
        prefixes = [os.path.join(manifest.directory, p) for p, g in zip(entry.prefixes, entry.groups) if g == group]
        if not prefixes:
            continue
        weights = [w for w, g in zip(entry.weights, entry.groups) if g == group]
        config = _dataset_config(manifest, [None, (prefixes, weights), None], VALIDATION_SEED, cache_dir)
        _, valid, _ = BlendedMegatronDatasetBuilder(GPTDataset, [None, num_samples, None], lambda: True,
                                                    config).build()
        datasets[group] = _without_soft_mask_bits(valid, manifest, 1.0)   # validation losses are plain means
    return datasets


class SoftMaskedDataset(torch.utils.data.Dataset):
    """A pack made with `data prep --soft-mask` stores lower-case (repeat) bases as id | bit: strip the bit from
    tokens and labels before the model sees them, and scale the loss mask by `weight` where the target is masked."""

    def __init__(self, dataset, bit: int, weight: float):
        self.dataset, self.bit, self.weight = dataset, bit, weight

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx):
        item = dict(self.dataset[idx])
        masked = (item["labels"] & self.bit) != 0
        item["tokens"] = item["tokens"] & ~self.bit
        item["labels"] = item["labels"] & ~self.bit
        if self.weight != 1.0:
            item["loss_mask"] = torch.where(masked, item["loss_mask"] * self.weight, item["loss_mask"])
        return item


def _without_soft_mask_bits(dataset, manifest: Manifest, weight: float):
    """The dataset as the model must read it: soft-mask bits stripped (and turned into loss weights) if it has them."""
    return dataset if manifest.soft_mask_bit is None else SoftMaskedDataset(dataset, manifest.soft_mask_bit, weight)


class GlobalBatchSampler:
    """Yields this data-parallel rank's micro-batches (lists of sample indices) from `consumed_samples` on."""

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int, global_batch_size: int,
                 dp_rank: int, dp_size: int):
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.global_batch_size = global_batch_size
        self.per_rank = global_batch_size // dp_size
        self.dp_rank = dp_rank

    def __iter__(self) -> Iterator[List[int]]:
        start = self.consumed_samples
        while start + self.global_batch_size <= self.total_samples:
            first = start + self.dp_rank * self.per_rank
            for offset in range(0, self.per_rank, self.micro_batch_size):
                yield list(range(first + offset, first + offset + self.micro_batch_size))
            start += self.global_batch_size

    def __len__(self) -> int:
        return (self.total_samples - self.consumed_samples) // self.global_batch_size * (
            self.per_rank // self.micro_batch_size)


def micro_batches(dataset, sampler: GlobalBatchSampler, num_workers: int, seed: int) -> Iterator[Dict[str, torch.Tensor]]:
    """A DataLoader over `dataset` in the sampler's order; its private generator keeps the global RNGs untouched."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed), persistent_workers=False,
        prefetch_factor=2 if num_workers > 0 else None)
    return iter(loader)


def fixed_micro_batches(dataset, num_samples: int, micro_batch_size: int, dp_rank: int, dp_size: int,
                        ) -> List[List[int]]:
    """The validation set's index lists for this rank: always the same samples, split across data-parallel ranks."""
    sampler = GlobalBatchSampler(num_samples, 0, micro_batch_size, num_samples, dp_rank, dp_size)
    return list(sampler)


def stack(dataset, indices: List[int]) -> Dict[str, torch.Tensor]:
    """Collate dataset items the way the DataLoader does (used for the small validation sets)."""
    items = [dataset[i] for i in indices]
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}
