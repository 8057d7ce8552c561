"""Public entry point of the k-mer window mean: the autograd Function around the Triton kernels, and dispatch.

`kmer_window_mean` runs the fused Triton kernels on CUDA tensors, and in the Triton interpreter when
TRITON_INTERPRET=1 (the test suite on CPU); elsewhere it runs the plain-PyTorch reference.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .kmer_triton import INTERPRETING, window_mean_backward, window_mean_forward
from .reference import default_orders, kmer_window_mean_reference, window_span


class KmerWindowMean(torch.autograd.Function):
    """Fused forward (one output write) and table-gradient backward; ids, codes and doc_start get no gradient."""

    @staticmethod
    def forward(ctx, input_ids, symbol_codes, doc_start, window, orders, *tables):
        b, s = input_ids.shape
        d = tables[0].shape[1]
        out = torch.empty(b * s, len(tables) * d, dtype=tables[0].dtype, device=input_ids.device)
        counts = torch.empty(b * s, len(tables), dtype=torch.float32, device=input_ids.device)
        for i, (n, table) in enumerate(zip(orders, tables)):
            window_mean_forward(input_ids, symbol_codes, doc_start, table, n, window_span(n, window),
                                out[:, i * d:(i + 1) * d], counts[:, i])
        ctx.save_for_backward(input_ids, symbol_codes, counts, *([] if doc_start is None else [doc_start]))
        ctx.window, ctx.orders, ctx.table_dtype = window, orders, tables[0].dtype
        ctx.table_rows = [table.shape[0] for table in tables]
        return out.view(b, s, len(tables) * d)

    @staticmethod
    def backward(ctx, grad_out):
        input_ids, symbol_codes, counts, *rest = ctx.saved_tensors
        doc_start = rest[0] if rest else None
        b, s = input_ids.shape
        grad_out = grad_out.reshape(b * s, -1)
        if grad_out.stride(1) != 1:
            grad_out = grad_out.contiguous()
        d = grad_out.shape[1] // len(ctx.orders)
        grads = []
        for i, (n, rows) in enumerate(zip(ctx.orders, ctx.table_rows)):
            grad = window_mean_backward(input_ids, symbol_codes, doc_start, grad_out[:, i * d:(i + 1) * d],
                                        counts[:, i], rows, n, window_span(n, ctx.window))
            grads.append(grad.to(ctx.table_dtype))
        return (None, None, None, None, None, *grads)


def kmer_window_mean_triton(input_ids: torch.Tensor, tables: Sequence[torch.Tensor], symbol_codes: torch.Tensor,
                            window: Optional[int], orders: Optional[Sequence[int]] = None,
                            doc_start: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The fused Triton path (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1)."""
    orders = default_orders(tables, orders)
    tables = [table.contiguous() for table in tables]
    if doc_start is not None:
        doc_start = doc_start.to(torch.int64).contiguous()
    symbol_codes = symbol_codes.to(device=input_ids.device, dtype=torch.int64).contiguous()
    input_ids = input_ids.to(torch.int64).contiguous()
    return KmerWindowMean.apply(input_ids, symbol_codes, doc_start, window, orders, *tables)


def kmer_window_mean(input_ids: torch.Tensor, tables: Sequence[torch.Tensor], symbol_codes: torch.Tensor,
                     window: Optional[int], orders: Optional[Sequence[int]] = None,
                     doc_start: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Windowed k-mer means m(t) = concat_n m_n(t): [b, s, len(tables) * d] in the tables' dtype.

    input_ids: int64 [b, s]. tables: the n-th is [5**n, d] for n = 1..len(tables), or for the named `orders`.
    symbol_codes: int64 over the vocabulary, 0..4 for A, C, G, T, N and -1 for every other token.
    window: W (L_n = W - n + 1 n-gram ends per window; none if W < n) or None for no-window mode (L_n = 1).
    doc_start: optional int64 [b, s], the first position of each position's document (see
    `reference.document_starts`): n-grams ending before it are left out of the window (window reset at EOD).
    Accumulates in fp32 whatever the table dtype. Gradients flow to every table.
    """
    if input_ids.is_cuda or INTERPRETING:
        return kmer_window_mean_triton(input_ids, tables, symbol_codes, window, orders, doc_start)
    return kmer_window_mean_reference(input_ids, tables, symbol_codes, window, orders, doc_start)
