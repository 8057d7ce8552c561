"""The k-mer window mean in plain PyTorch: the definition the Triton kernels are tested against.

Spec sections 1-2 (shared/spec/gengram.md), written for reading rather than speed. Everything is accumulated
in fp32 whatever the table dtype: each window is a sum of at most W shifted rows, never a difference of
prefix sums (the public reference's bf16 cumsum loses most of the signal late in a long sequence).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

ALPHABET_SIZE = 5  # A, C, G, T, N -> codes 0..4; every other token has code -1


def window_span(order: int, window: Optional[int]) -> int:
    """L_n: how many n-gram end positions a window of W tokens holds (1 in no-window mode, 0 if W < n)."""
    if window is None:
        return 1
    if window < 1:
        raise ValueError(f"window must be >= 1 or None, got {window}")
    return max(window - order + 1, 0)


def default_orders(tables: Sequence[torch.Tensor], orders: Optional[Sequence[int]]) -> Tuple[int, ...]:
    """Orders of the given tables: 1..len(tables) unless named; checks that each table has 5**n rows."""
    orders = tuple(range(1, len(tables) + 1)) if orders is None else tuple(int(n) for n in orders)
    if len(orders) != len(tables):
        raise ValueError(f"{len(tables)} tables but {len(orders)} orders {orders}")
    for n, table in zip(orders, tables):
        if n < 1 or table.dim() != 2 or table.shape[0] != ALPHABET_SIZE ** n:
            raise ValueError(f"the table of order {n} must be [{ALPHABET_SIZE ** n}, d], got {tuple(table.shape)}")
    if len({t.shape[1] for t in tables}) != 1:
        raise ValueError("all tables must have the same width d")
    return orders


def document_starts(input_ids: torch.Tensor, eod_id: int) -> torch.Tensor:
    """[b, s] int64: for each position, the first position after the last EOD at or before it (0 if none).

    Passed as `doc_start` to reset the window at EOD: no n-gram ending before it is pooled.
    """
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    after_eod = torch.where(input_ids == eod_id, positions + 1, torch.zeros_like(positions))
    return torch.cummax(after_eod, dim=1).values


def shift_right(x: torch.Tensor, k: int, fill) -> torch.Tensor:
    """x[:, t - k] at position t along dim 1 (positions before the start get `fill`)."""
    if k == 0:
        return x
    pad = torch.full_like(x[:, :k], fill)
    return torch.cat([pad, x[:, :-k]], dim=1)


def kmer_ids(codes: torch.Tensor, order: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """id_n(t) = sum_k code(x[t-k]) * 5^k and whether all n tokens are valid symbols inside the sequence."""
    ids = torch.zeros_like(codes)
    valid = torch.ones_like(codes, dtype=torch.bool)
    for k in range(order):
        code = shift_right(codes, k, fill=-1)
        valid &= code >= 0
        ids += code.clamp(min=0) * ALPHABET_SIZE ** k
    return ids, valid


def window_mean_one_order(codes: torch.Tensor, table: torch.Tensor, order: int, window: Optional[int],
                          doc_start: Optional[torch.Tensor]) -> torch.Tensor:
    """m_n(t) [b, s, d] fp32: mean of table rows of the valid n-grams ending in [t - L_n + 1, t]."""
    ids, valid = kmer_ids(codes, order)
    rows = table[ids].float() * valid.unsqueeze(-1)  # rows of invalid n-grams are zeroed
    positions = torch.arange(codes.shape[1], device=codes.device).expand_as(codes)
    total = torch.zeros(rows.shape, dtype=torch.float32, device=rows.device)
    count = torch.zeros(codes.shape, dtype=torch.float32, device=rows.device)
    for k in range(window_span(order, window)):  # n-gram ending at j = t - k
        keep = shift_right(valid, k, fill=False)
        if doc_start is not None:
            keep = keep & (positions - k >= doc_start)
        total += shift_right(rows, k, fill=0.0) * keep.unsqueeze(-1)
        count += keep
    return total / count.clamp(min=1).unsqueeze(-1)


def kmer_window_mean_reference(input_ids: torch.Tensor, tables: Sequence[torch.Tensor], symbol_codes: torch.Tensor,
                               window: Optional[int], orders: Optional[Sequence[int]] = None,
                               doc_start: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[b, s, len(tables) * d] in the tables' dtype: concat over orders of the windowed k-mer means.

    Differentiable in the tables through ordinary autograd (gather + sums).
    """
    orders = default_orders(tables, orders)
    codes = symbol_codes[input_ids]
    means = [window_mean_one_order(codes, table, n, window, doc_start) for n, table in zip(orders, tables)]
    return torch.cat(means, dim=-1).to(tables[0].dtype)
