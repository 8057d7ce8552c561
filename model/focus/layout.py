"""Where the summary tokens go: one after every k-th base, at consecutive positions of the augmented sequence.

A position of the augmented sequence is described by two numbers, enough for every visibility rule:
    base_index  the 0-based global index of the base (for a summary: of the last base of the k-mer it closes)
    is_summary  whether the position holds a summary token
From them: augmented position = base_index + base_index // k + is_summary, window = base_index // W,
k-mer = base_index // k, and a summary's ordinal = its k-mer. Streaming and the parallel forward describe their
positions the same way, so both read the same rules (model/focus/mask.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Layout:
    """Per-position description of (a slice of) the augmented sequence; 1-D tensors of equal length."""

    base_index: torch.Tensor  # int64
    is_summary: torch.Tensor  # bool

    def __len__(self) -> int:
        return self.base_index.numel()

    def positions(self, k: int) -> torch.Tensor:
        """Augmented (RoPE) positions: consecutive over bases and summaries."""
        return self.base_index + self.base_index // k + self.is_summary.long()

    def cat(self, other: "Layout") -> "Layout":
        return Layout(torch.cat([self.base_index, other.base_index]), torch.cat([self.is_summary, other.is_summary]))

    def select(self, keep: torch.Tensor) -> "Layout":
        return Layout(self.base_index[keep], self.is_summary[keep])

    @staticmethod
    def empty(device=None) -> "Layout":
        return Layout(torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, dtype=torch.bool, device=device))


def layout_for_bases(start: int, count: int, k: int, device=None) -> Layout:
    """The augmented positions holding bases start..start+count-1 and the summaries right after each k-th base."""
    index = torch.arange(start, start + count, dtype=torch.long, device=device)
    closes = (index + 1) % k == 0
    base_index = torch.repeat_interleave(index, 1 + closes.long())
    slots = torch.cumsum(1 + closes.long(), 0) - 1  # slot of each base's last entry (its summary if it closes)
    is_summary = torch.zeros(base_index.numel(), dtype=torch.bool, device=device)
    is_summary[slots[closes]] = True
    return Layout(base_index, is_summary)


def insert_summaries(base_ids: torch.Tensor, k: int, summary_id: int, start: int = 0):
    """[b, L] base ids -> ([b, n] augmented ids, Layout): a summary token after every k-th base (global count from
    `start`, so a stream cut into pieces gets the same summaries as the whole sequence)."""
    layout = layout_for_bases(start, base_ids.shape[1], k, device=base_ids.device)
    ids = torch.full((base_ids.shape[0], len(layout)), summary_id, dtype=base_ids.dtype, device=base_ids.device)
    ids[:, ~layout.is_summary] = base_ids
    return ids, layout


def next_base_labels(base_ids: torch.Tensor, layout: Layout, next_id: torch.Tensor = None):
    """Eq. 6 of the FOCUS paper: every position predicts the next real base, pi(t) = min{u > t: u is a base}.

    Returns ([b, n] labels, [n] bool valid): the last positions (no next base in `base_ids`, unless `next_id` [b]
    gives the base after the slice) are not valid.
    """
    targets = torch.cat([base_ids[:, 1:], (next_id if next_id is not None else base_ids[:, :1]).reshape(-1, 1)], 1)
    local = layout.base_index - layout.base_index[0] if len(layout) else layout.base_index
    # a base at local j and the summary after it both predict base j + 1
    labels = targets[:, local]
    valid = local < base_ids.shape[1] - (0 if next_id is not None else 1)
    return labels, valid
