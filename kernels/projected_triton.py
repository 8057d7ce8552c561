"""Triton kernels of the projected-table window sum: out(t) = sum_n mean_{j in window_n(t)} P[row_n(j)].

P [R, C] stacks the projected tables of every order (rows of order n at a fixed offset); row_n(j) is the row of the
n-gram ending at j, or -1 when it is not valid (computed once per forward on the host, `projected.kmer_rows`).

Forward, per program (one sequence, a block of BLOCK_T positions, a block of C columns): for each order, the rows of
the n-grams ending in [t0 - L_n + 1, t0 + BLOCK_T) are loaded once (a sliding window over the block, not L_n
gathers per output) and the window sums of the whole block are one banded 0/1 matmul, member[t, j] @ rows[j],
accumulated in fp32 (bf16 rows times exact 0/1 weights: tensor cores, no rounding). The per-order means are summed
in registers and the [BLOCK_T, C] output block is written once, key and value together.

Backward, one launch per order: the n-gram ending at j gets G(j) = sum over the t whose window holds it of
dOut(t) / count_n(t), again a banded matmul over a block of j and the following blocks of t. G is then added to
its table row:
- orders with at most LOCAL_ROWS_MAX rows (n <= 3): each program keeps its table gradient in registers
  (onehot(row)^T @ G over a chunk of blocks) and writes it once into a partial buffer that the host sums: no atomics,
  deterministic.
- larger tables: one fp32 atomic add per (n-gram, column); rows are hit rarely, so they seldom contend. These are
  the only atomics (and the only non-determinism).
With 16-bit gradients the fp32 operands of the matmuls are split into two bf16 halves (hi + lo: ~16 significant
bits) so the products run on tensor cores; fp32 gradients use IEEE fp32 matmuls.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from .kmer_triton import INTERPRETING, _kmer_id

LOCAL_ROWS_MAX = 128  # orders with up to this many table rows get the register (one-hot matmul) backward
MAX_ORDERS = 6  # the forward kernel sums up to this many orders in one launch


@triton.jit
def _order_rows(ids_ptr, codes_ptr, vocab_size, rows_ptr, seq_base, pos, seq_len, n_tokens,
                I: tl.constexpr, ORDER: tl.constexpr, OFFSET: tl.constexpr):
    kid, valid = _kmer_id(ids_ptr, codes_ptr, vocab_size, seq_base, pos, seq_len, ORDER)
    tl.store(rows_ptr + I * n_tokens + seq_base + pos, tl.where(valid, kid + OFFSET, -1), mask=pos < seq_len)


@triton.jit
def kmer_rows_kernel(ids_ptr, codes_ptr, vocab_size, rows_ptr, seq_len, n_tokens,
                     ORDER0: tl.constexpr, ORDER1: tl.constexpr, ORDER2: tl.constexpr, ORDER3: tl.constexpr,
                     ORDER4: tl.constexpr, ORDER5: tl.constexpr, OFFSET0: tl.constexpr, OFFSET1: tl.constexpr,
                     OFFSET2: tl.constexpr, OFFSET3: tl.constexpr, OFFSET4: tl.constexpr, OFFSET5: tl.constexpr,
                     BLOCK: tl.constexpr):
    """rows [n_orders, b*s] int32 in one launch: offset_n + id_n(t) where the n-gram ending at t is valid, else -1
    (an order of 0 is absent)."""
    pos = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    seq_base = tl.program_id(1) * seq_len
    if ORDER0 > 0:
        _order_rows(ids_ptr, codes_ptr, vocab_size, rows_ptr, seq_base, pos, seq_len, n_tokens, 0, ORDER0, OFFSET0)
    if ORDER1 > 0:
        _order_rows(ids_ptr, codes_ptr, vocab_size, rows_ptr, seq_base, pos, seq_len, n_tokens, 1, ORDER1, OFFSET1)
    if ORDER2 > 0:
        _order_rows(ids_ptr, codes_ptr, vocab_size, rows_ptr, seq_base, pos, seq_len, n_tokens, 2, ORDER2, OFFSET2)
    if ORDER3 > 0:
        _order_rows(ids_ptr, codes_ptr, vocab_size, rows_ptr, seq_base, pos, seq_len, n_tokens, 3, ORDER3, OFFSET3)
    if ORDER4 > 0:
        _order_rows(ids_ptr, codes_ptr, vocab_size, rows_ptr, seq_base, pos, seq_len, n_tokens, 4, ORDER4, OFFSET4)
    if ORDER5 > 0:
        _order_rows(ids_ptr, codes_ptr, vocab_size, rows_ptr, seq_base, pos, seq_len, n_tokens, 5, ORDER5, OFFSET5)


def kmer_rows_triton(input_ids: torch.Tensor, symbol_codes: torch.Tensor, orders: Sequence[int],
                     offsets: Sequence[int]) -> torch.Tensor:
    """int32 [n_orders, b, s], one launch (see projected.kmer_rows)."""
    b, s = input_ids.shape
    if len(orders) > MAX_ORDERS:
        raise ValueError(f"at most {MAX_ORDERS} k-mer orders, got {len(orders)}")
    rows = torch.empty(len(orders), b, s, dtype=torch.int32, device=input_ids.device)
    padded_orders = list(orders) + [0] * (MAX_ORDERS - len(orders))
    padded_offsets = list(offsets) + [0] * (MAX_ORDERS - len(orders))
    block = min(max(triton.next_power_of_2(s), 16), 1024)
    kmer_rows_kernel[(triton.cdiv(s, block), b)](
        input_ids, symbol_codes, symbol_codes.numel(), rows, s, b * s,
        *padded_orders, *padded_offsets, BLOCK=block)
    return rows


@triton.jit
def _dot(a, b, SPLIT: tl.constexpr):
    """a @ b in fp32 for an exact 0/1 matrix `a`: IEEE fp32, or b split into bf16 hi + lo halves."""
    if SPLIT:
        a16 = a.to(tl.bfloat16)
        hi = b.to(tl.bfloat16)
        lo = (b - hi.to(tl.float32)).to(tl.bfloat16)
        return tl.dot(a16, hi) + tl.dot(a16, lo)
    return tl.dot(a.to(tl.float32), b, input_precision="ieee")


@triton.jit
def _order_window_mean(rows_ptr, proj_ptr, proj_stride, seq_base, seq_len, span, t, t0, first, cols, col_ok,
                       NPREV: tl.constexpr, BLOCK_T: tl.constexpr, EXACT_16BIT: tl.constexpr):
    """Window means of one order for the positions t (one block) and their valid counts, in fp32."""
    total = tl.zeros([BLOCK_T, cols.shape[0]], dtype=tl.float32)
    count = tl.zeros([BLOCK_T], dtype=tl.float32)
    for jb in tl.static_range(NPREV + 1):
        j = t0 + (jb - NPREV) * BLOCK_T + tl.arange(0, BLOCK_T)
        needed = (j >= 0) & (j < seq_len) & (j > t0 - span)  # some t of the block has j in its window
        row = tl.load(rows_ptr + seq_base + j, mask=needed, other=-1)
        valid = row >= 0
        member = (valid[None, :] & (j[None, :] <= t[:, None]) & (j[None, :] > t[:, None] - span)
                  & (j[None, :] >= first[:, None]))
        values = tl.load(proj_ptr + row.to(tl.int64)[:, None] * proj_stride + cols[None, :],
                         mask=valid[:, None] & col_ok[None, :], other=0.0)
        if EXACT_16BIT:  # bf16/fp16 rows times 0/1: exact products, fp32 accumulation
            total += tl.dot(member.to(values.dtype), values)
        else:
            total += tl.dot(member.to(tl.float32), values.to(tl.float32), input_precision="ieee")
        count += tl.sum(member.to(tl.float32), axis=1)
    return total / tl.maximum(count, 1.0)[:, None], count


@triton.jit
def projected_window_sum_fwd_kernel(rows_ptr, rows_stride, proj_ptr, proj_stride, doc_start_ptr, out_ptr, count_ptr,
                                    seq_len, batch, n_tokens, width, span0, span1, span2, span3, span4, span5,
                                    N_ORDERS: tl.constexpr, NPREV: tl.constexpr, HAS_DOC_START: tl.constexpr,
                                    EXACT_16BIT: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    t0 = tl.program_id(0) * BLOCK_T
    t = t0 + tl.arange(0, BLOCK_T)
    seq_base = tl.program_id(1) * seq_len
    cols = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < width
    in_seq = t < seq_len
    first = tl.zeros([BLOCK_T], dtype=tl.int64)
    if HAS_DOC_START:
        first = tl.load(doc_start_ptr + seq_base + t, mask=in_seq, other=0)
    write_counts = tl.program_id(2) == 0
    flat = (seq_base + t).to(tl.int64)  # [b, s] order: ids, counts, doc_start
    out_rows = t.to(tl.int64) * batch + tl.program_id(1)  # [s, b] order: the output (megatron's layout)

    out = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
    for i in tl.static_range(MAX_ORDERS):
        if i < N_ORDERS:
            span = span0
            if i == 1:
                span = span1
            if i == 2:
                span = span2
            if i == 3:
                span = span3
            if i == 4:
                span = span4
            if i == 5:
                span = span5
            mean, count = _order_window_mean(rows_ptr + i * rows_stride, proj_ptr, proj_stride, seq_base, seq_len,
                                             span, t, t0, first, cols, col_ok, NPREV, BLOCK_T, EXACT_16BIT)
            out += mean
            if write_counts:
                tl.store(count_ptr + i * n_tokens + flat, count, mask=in_seq)
    tl.store(out_ptr + out_rows[:, None] * width + cols[None, :], out.to(out_ptr.dtype.element_ty),
             mask=in_seq[:, None] & col_ok[None, :])


@triton.jit
def projected_window_sum_bwd_kernel(rows_ptr, count_ptr, doc_start_ptr, grad_out_ptr, grad_ptr,
                                    seq_len, batch, width, span, row_offset, blocks_per_program,
                                    NNEXT: tl.constexpr, HAS_DOC_START: tl.constexpr, LOCAL_ROWS: tl.constexpr,
                                    SPLIT: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    seq_base = tl.program_id(0) * seq_len
    cols = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < width
    if LOCAL_ROWS > 0:
        local_rows = tl.arange(0, LOCAL_ROWS)
        table_grad = tl.zeros([LOCAL_ROWS, BLOCK_C], dtype=tl.float32)

    first_block = tl.program_id(1) * blocks_per_program
    for block in range(first_block, first_block + blocks_per_program):
        j0 = block * BLOCK_T
        j = j0 + tl.arange(0, BLOCK_T)  # n-gram ends
        row = tl.load(rows_ptr + seq_base + j, mask=j < seq_len, other=-1)
        valid = row >= 0
        ngram_grad = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)  # G(j)
        for tb in tl.static_range(NNEXT + 1):
            t = j0 + tb * BLOCK_T + tl.arange(0, BLOCK_T)  # output positions whose window may hold j
            reach = (t < seq_len) & (t < j0 + BLOCK_T - 1 + span)
            flat = (seq_base + t).to(tl.int64)
            out_rows = t.to(tl.int64) * batch + tl.program_id(0)
            count = tl.load(count_ptr + flat, mask=reach, other=1.0)
            member = valid[:, None] & (t[None, :] >= j[:, None]) & (t[None, :] < j[:, None] + span)
            if HAS_DOC_START:
                first = tl.load(doc_start_ptr + flat, mask=reach, other=0)
                member = member & (j[:, None] >= first[None, :])
            grad_out = tl.load(grad_out_ptr + out_rows[:, None] * width + cols[None, :],
                               mask=reach[:, None] & col_ok[None, :], other=0.0)
            ngram_grad += _dot(member, grad_out.to(tl.float32) / tl.maximum(count, 1.0)[:, None], SPLIT)
        if LOCAL_ROWS > 0:  # segmented sum by table row: onehot(row)^T @ G, in registers
            onehot = (local_rows[:, None] == (row - row_offset)[None, :]) & valid[None, :]
            table_grad += _dot(onehot, ngram_grad, SPLIT)
        else:
            tl.atomic_add(grad_ptr + row.to(tl.int64)[:, None] * width + cols[None, :], ngram_grad,
                          mask=valid[:, None] & col_ok[None, :])

    if LOCAL_ROWS > 0:  # this program's partial table gradient, written once
        program = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
        partial = grad_ptr + program.to(tl.int64) * LOCAL_ROWS * width
        tl.store(partial + local_rows[:, None] * width + cols[None, :], table_grad, mask=col_ok[None, :])


def _tensor_core_dots(dtype: torch.dtype) -> bool:
    """16-bit operands for the matmuls. Not in the interpreter: its bf16 tl.dot returns garbage (Triton 3.x), so
    there the same matmuls run in fp32 (identical results: the 0/1 products are exact either way)."""
    return dtype in (torch.bfloat16, torch.float16) and not INTERPRETING


def _block_t(seq_len: int) -> int:
    """Positions per block: 64 on a GPU; in the interpreter one block per (short) sequence (per-program overhead)."""
    if INTERPRETING:
        return min(max(triton.next_power_of_2(seq_len), 16), 256)
    return 64


def _block_c(width: int, cap: int) -> int:
    return min(max(triton.next_power_of_2(width), 16), cap)


def window_sum_forward(rows: torch.Tensor, spans: Sequence[int], doc_start: Optional[torch.Tensor],
                       projected: torch.Tensor, batch: int, seq_len: int):
    """(out [s*b, C] in projected's dtype, counts [n_orders, b*s] fp32). rows: int32 [n_orders, b*s]."""
    n_orders, n_tokens = rows.shape
    if n_orders > MAX_ORDERS:
        raise ValueError(f"at most {MAX_ORDERS} k-mer orders, got {n_orders}")
    width = projected.shape[1]
    out = torch.empty(n_tokens, width, dtype=projected.dtype, device=projected.device)
    counts = torch.empty(n_orders, n_tokens, dtype=torch.float32, device=projected.device)
    block_t = _block_t(seq_len)
    block_c = _block_c(width, cap=128 if not INTERPRETING else 1024)
    nprev = triton.cdiv(max(max(spans), 1) - 1, block_t)
    padded = list(spans) + [0] * (MAX_ORDERS - n_orders)
    grid = (triton.cdiv(seq_len, block_t), batch, triton.cdiv(width, block_c))
    projected_window_sum_fwd_kernel[grid](
        rows, rows.stride(0), projected, projected.stride(0), doc_start if doc_start is not None else rows,
        out, counts, seq_len, batch, n_tokens, width, *padded,
        N_ORDERS=n_orders, NPREV=nprev, HAS_DOC_START=doc_start is not None,
        EXACT_16BIT=_tensor_core_dots(projected.dtype), BLOCK_T=block_t, BLOCK_C=block_c,
        num_warps=8 if not INTERPRETING else 4)
    return out, counts


def window_sum_backward(rows: torch.Tensor, counts: torch.Tensor, spans: Sequence[int],
                        doc_start: Optional[torch.Tensor], grad_out: torch.Tensor, row_offsets: Sequence[int],
                        row_counts: Sequence[int], batch: int, seq_len: int) -> torch.Tensor:
    """The fp32 gradient [R, C] of the stacked projected tables from the output gradient [s*b, C]."""
    n_tokens, width = grad_out.shape
    total_rows = row_offsets[-1] + row_counts[-1]
    grad = torch.zeros(total_rows, width, dtype=torch.float32, device=grad_out.device)
    block_t = _block_t(seq_len)
    block_c = _block_c(width, cap=64 if not INTERPRETING else 1024)
    n_blocks = triton.cdiv(seq_len, block_t)
    per_program = n_blocks if INTERPRETING else min(n_blocks, 16)
    grid = (batch, triton.cdiv(n_blocks, per_program), triton.cdiv(width, block_c))
    split = _tensor_core_dots(grad_out.dtype)
    for i, (span, offset, n_rows) in enumerate(zip(spans, row_offsets, row_counts)):
        if span == 0:
            continue  # W < n: the order is in no window, its gradient stays zero
        local = max(triton.next_power_of_2(n_rows), 16) if n_rows <= LOCAL_ROWS_MAX else 0
        target = (torch.empty(grid[0] * grid[1], local, width, dtype=torch.float32, device=grad_out.device)
                  if local else grad)
        projected_window_sum_bwd_kernel[grid](
            rows[i], counts[i], doc_start if doc_start is not None else rows, grad_out, target,
            seq_len, batch, width, span, offset, per_program,
            NNEXT=triton.cdiv(span - 1, block_t), HAS_DOC_START=doc_start is not None, LOCAL_ROWS=local,
            SPLIT=split, BLOCK_T=block_t, BLOCK_C=block_c, num_warps=8 if not INTERPRETING else 4)
        if local:
            grad[offset:offset + n_rows] = target[:, :n_rows].sum(dim=0)
    return grad
