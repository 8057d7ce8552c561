"""The public reference's window algorithm, re-implemented from its description (gengram-notes.md section 1.3).

Kept only as a baseline: the benchmark times it, and a test shows that its bf16 prefix sums fail the accuracy
bar the fused kernel meets. Do not use it in a model: window sums are differences of prefix sums stored in the
table dtype, so late in a long bf16 sequence they are swamped by the prefix magnitude.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .reference import default_orders, kmer_ids, window_span


def shifted_difference(prefix: torch.Tensor, span: int) -> torch.Tensor:
    """prefix[t] - prefix[t - span] along dim 1, with prefix[< 0] = 0: the sum over the last `span` positions."""
    before = torch.zeros_like(prefix)
    before[:, span:] = prefix[:, :-span]
    return prefix - before


def kmer_window_mean_prefix_sum(input_ids: torch.Tensor, tables: Sequence[torch.Tensor], symbol_codes: torch.Tensor,
                                window: int, orders: Optional[Sequence[int]] = None) -> torch.Tensor:
    """[b, s, len(tables) * d]: one gather per order, window sums from cumsum in the table dtype, fp32 counts."""
    orders = default_orders(tables, orders)
    codes = symbol_codes[input_ids]
    means = []
    for n, table in zip(orders, tables):
        span = window_span(n, window)
        ids, valid = kmer_ids(codes, n)
        rows = table[ids * valid] * valid.unsqueeze(-1).to(table.dtype)  # invalid n-grams: row 0, zeroed
        if span == 0:
            means.append(torch.zeros_like(rows))
            continue
        sums = shifted_difference(torch.cumsum(rows, dim=1), span)  # in the table dtype, as the reference does
        counts = shifted_difference(torch.cumsum(valid.float(), dim=1), span)
        means.append((sums / counts.clamp(min=1).unsqueeze(-1)).to(table.dtype))
    return torch.cat(means, dim=-1)
