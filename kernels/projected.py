"""Gengram's key and value straight from the k-mer tables: the projected-table formulation.

The projections are linear, so W m(t) = sum_n W^(n) mean_j E_n[id_n(j)] = sum_n mean_j (E_n W^(n)T)[id_n(j)]: project
each table once per forward (P_n = E_n W^(n)T, [5^n, C] with C = H_key + H_value) and average rows of P_n over the
window instead of averaging rows of E_n into m [tokens, 6d] and multiplying m by W. Same function and parameters
(spec section 3), fp32 accumulation of the window sums; the per-token 6d -> 2H GEMMs become table-sized GEMMs.

`kmer_key_value` dispatches like `kmer_window_mean`: the Triton kernels (projected_triton.py) on CUDA tensors and in
the interpreter; elsewhere (CPU training) a PyTorch path that averages the unprojected rows (window sums as
differences of fp64 prefix sums: cost independent of W, exact to far below fp32 rounding) and projects m once,
differentiated by autograd.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from .kmer_triton import INTERPRETING
from .reference import ALPHABET_SIZE, default_orders, kmer_ids, window_span


def kmer_rows(input_ids: torch.Tensor, symbol_codes: torch.Tensor, orders: Sequence[int]) -> torch.Tensor:
    """int32 [n_orders, b, s]: the row of the stacked projected tables for the n-gram ending at each position
    (order i's rows start after the 5^n rows of the orders before it), or -1 where the n-gram is not valid.
    One Triton launch where the kernels run; PyTorch ops elsewhere."""
    sizes = [ALPHABET_SIZE ** n for n in orders]
    offsets = [sum(sizes[:i]) for i in range(len(orders))]
    symbol_codes = symbol_codes.to(device=input_ids.device, dtype=torch.int64)
    if input_ids.is_cuda or INTERPRETING:
        from .projected_triton import kmer_rows_triton

        return kmer_rows_triton(input_ids.to(torch.int64).contiguous(), symbol_codes.contiguous(), orders, offsets)
    codes = symbol_codes[input_ids]
    rows = []
    for n, offset in zip(orders, offsets):
        ids, valid = kmer_ids(codes, n)
        rows.append(torch.where(valid, ids + offset, -1))
    return torch.stack(rows).to(torch.int32)


def column_slices(tables: Sequence[torch.Tensor]) -> List[slice]:
    """The columns of the projection weights that read order i's part of m: i*d .. (i+1)*d."""
    d = tables[0].shape[1]
    return [slice(i * d, (i + 1) * d) for i in range(len(tables))]


def project_tables(tables: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """P [R, C]: row block i is E_i @ W[:, order i's columns]^T with W = [W_1; W_2; ...] stacked, in W's dtype."""
    weight = torch.cat(list(weights))  # [C, len(tables) * d]: one GEMM per order
    out = torch.empty(sum(t.shape[0] for t in tables), weight.shape[0], dtype=weight.dtype, device=weight.device)
    r = 0
    for table, cols in zip(tables, column_slices(tables)):
        torch.mm(table.to(weight.dtype), weight[:, cols].t(), out=out[r:r + table.shape[0]])
        r += table.shape[0]
    return out


class ProjectedWindowSum(torch.autograd.Function):
    """Projection GEMMs + the Triton window-sum kernels; gradients for every table and weight."""

    @staticmethod
    def forward(ctx, rows, doc_start, spans, n_tables, *params):
        tables, weights = params[:n_tables], params[n_tables:]
        from .projected_triton import window_sum_forward

        b, s = rows.shape[1:]
        flat_rows = rows.reshape(rows.shape[0], b * s)
        out, counts = window_sum_forward(flat_rows, spans, doc_start, project_tables(tables, weights), b, s)
        ctx.save_for_backward(flat_rows, counts, *tables, *weights,
                              *([] if doc_start is None else [doc_start]))
        ctx.spans, ctx.n_tables, ctx.n_weights, ctx.shape = spans, n_tables, len(weights), (b, s)
        return out.view(s, b, -1)

    @staticmethod
    def backward(ctx, grad_out):
        from .projected_triton import window_sum_backward

        flat_rows, counts, *rest = ctx.saved_tensors
        tables, weights = rest[:ctx.n_tables], rest[ctx.n_tables:ctx.n_tables + ctx.n_weights]
        doc_start = rest[-1] if len(rest) > ctx.n_tables + ctx.n_weights else None
        b, s = ctx.shape
        row_counts = [t.shape[0] for t in tables]
        offsets = [sum(row_counts[:i]) for i in range(len(tables))]
        grad_out = grad_out.reshape(s * b, -1).contiguous()
        grad_p = window_sum_backward(flat_rows, counts, ctx.spans, doc_start, grad_out, offsets, row_counts, b, s)
        weight = torch.cat(list(weights))
        grad_p = grad_p.to(weight.dtype)
        grad_weight = torch.empty_like(weight)
        grad_tables = []
        for table, cols, r, n in zip(tables, column_slices(tables), offsets, row_counts):
            block = grad_p[r:r + n]  # dL/dP_i
            grad_tables.append((block @ weight[:, cols]).to(table.dtype))
            grad_weight[:, cols] = block.t() @ table.to(weight.dtype)
        grad_weights = grad_weight.split([w.shape[0] for w in weights])
        return (None, None, None, None, *grad_tables, *grad_weights)


def window_mean_by_prefix_sums(values: torch.Tensor, valid: torch.Tensor, span: int,
                               doc_start: Optional[torch.Tensor]) -> torch.Tensor:
    """[b, s, C] fp64: mean of `values` (zero where not valid) over the valid ends j in [max(t-span+1, doc), t]."""
    b, s, _ = values.shape
    if span == 1:
        return values.double()
    positions = torch.arange(s, device=values.device).expand(b, s)
    low = (positions - span + 1).clamp(min=0)  # first end in the window; the window is one contiguous range
    if doc_start is not None:
        low = torch.maximum(low, doc_start)
    prefix = F.pad(values.cumsum(dim=1, dtype=torch.float64), (0, 0, 1, 0))  # prefix[:, k] = sum of ends < k
    before = (low + torch.arange(b, device=values.device)[:, None] * (s + 1)).reshape(-1)
    sums = prefix[:, 1:] - prefix.reshape(b * (s + 1), -1).index_select(0, before).view(b, s, -1)
    counted = F.pad(valid.cumsum(dim=1), (1, 0))
    count = counted[:, 1:] - counted.gather(1, low)
    return sums / count.clamp(min=1).unsqueeze(-1)


def kmer_key_value_torch(rows: torch.Tensor, spans: Sequence[int], doc_start: Optional[torch.Tensor],
                         tables: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """The PyTorch path (CPU training): [s, b, C] in the weights' dtype, differentiable by autograd.

    Here the window sums are the expensive part, not the GEMMs, so this path averages the d-wide table rows (m,
    [b, s, len(tables) * d]) and projects m once, instead of averaging projected C-wide rows per order: the same
    GEMM work and 2H / d times less prefix-sum, gather and backward traffic (8x with the quickstart's H=128, d=32).
    """
    weight = torch.cat(list(weights))  # [C, len(tables) * d]
    means, offset = [], 0
    for table, order_rows, span in zip(tables, rows.long(), spans):
        if span > 0:
            valid = order_rows >= 0
            values = table[torch.where(valid, order_rows - offset, 0)] * valid.unsqueeze(-1)
            means.append(window_mean_by_prefix_sums(values, valid, span, doc_start))
        else:  # the order is longer than the window: its part of m is 0
            means.append(table.new_zeros(*rows.shape[1:], table.shape[1], dtype=torch.float64))
        offset += table.shape[0]
    m = torch.cat(means, dim=-1).to(weight.dtype)
    return (m @ weight.t()).transpose(0, 1)


def kmer_key_value(input_ids: torch.Tensor, tables: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
                   symbol_codes: torch.Tensor, window: Optional[int], orders: Optional[Sequence[int]] = None,
                   doc_start: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[s, b, sum of the weights' rows] (megatron's layout): concat_w W_w m(t), m(t) = concat_n mean of E_n rows.

    tables: E_n [5^n, d] for `orders` (default 1..len(tables)). weights: W_w [H_w, len(tables) * d], e.g. the key
    and the value projection weights (m's column block i belongs to order i). Other arguments as
    `kmer_window_mean`. The result is in the weights' dtype; the window sums are accumulated in fp32 or better.
    """
    orders = default_orders(tables, orders)
    features = len(tables) * tables[0].shape[1]
    for w in weights:
        if w.dim() != 2 or w.shape[1] != features:
            raise ValueError(f"projection weights must be [H, {features}] (len(orders) * d), got {tuple(w.shape)}")
    spans = tuple(window_span(n, window) for n in orders)
    rows = kmer_rows(input_ids, symbol_codes, orders)
    if doc_start is not None:
        doc_start = doc_start.to(torch.int64).contiguous()
    if input_ids.is_cuda or INTERPRETING:
        tables = [t.contiguous() for t in tables]
        return ProjectedWindowSum.apply(rows.contiguous(), doc_start, spans, len(tables), *tables, *weights)
    return kmer_key_value_torch(rows, spans, doc_start, tables, weights)
