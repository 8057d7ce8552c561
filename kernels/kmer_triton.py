"""Fused Triton kernels for the k-mer window mean (one launch per order) and its table gradient.

Forward, per program (a block of positions of one sequence x a block of columns): for each n-gram end j in the
window, compute id_n(j) and its validity from the token ids and the symbol-code table, gather the table row,
add it to an fp32 register accumulator; divide by the valid count and write the output block once.

Backward: the output gradient of position t reaches the n-grams ending at j = t-L_n+1..t, each scaled by
1/count(t). Each program walks a chunk of n-gram ends j, forms G(j) = sum_k dOut(j+k)/count(j+k) in fp32
registers (a forward-looking window, no atomics), and adds G(j) to the row id_n(j) of the table gradient:
- tables with at most LOCAL_ROWS_MAX rows (5, 25, 125: n <= 3, where every row is hit thousands of times per
  sequence): the segmented sum is a one-hot matmul onehot(id)^T @ G accumulated in registers over the whole
  chunk, written once per program into a partial buffer that the host sums: no atomics at all, deterministic.
- larger tables (625, 3125, 15625 rows): too many rows to hold in registers, and each row is hit rarely
  (random DNA: ~1.6 hits per 15625-row table per 25k positions), so one atomic add per (n-gram, column) seldom
  contends. These are the only atomics.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"  # read when the kernels below are decorated
LOCAL_ROWS_MAX = 128  # tables up to this many rows get the register (one-hot matmul) backward


@triton.jit
def _kmer_id(ids_ptr, codes_ptr, vocab_size, row_start, end, seq_len, ORDER: tl.constexpr):
    """id_n of the n-gram ending at `end` (positions within the row starting at `row_start`) and its validity."""
    kid = tl.zeros(end.shape, dtype=tl.int32)
    valid = (end >= ORDER - 1) & (end < seq_len)
    for i in tl.static_range(ORDER):  # oldest token first, so the newest ends up the least significant digit
        pos = end - (ORDER - 1) + i
        inside = valid & (pos >= 0)
        token = tl.load(ids_ptr + row_start + pos, mask=inside, other=-1)
        known = inside & (token >= 0) & (token < vocab_size)
        code = tl.load(codes_ptr + token, mask=known, other=-1).to(tl.int32)
        valid = valid & (code >= 0)
        kid = kid * 5 + tl.maximum(code, 0)
    return kid, valid


@triton.jit
def kmer_window_mean_fwd_kernel(ids_ptr, codes_ptr, vocab_size, doc_start_ptr, table_ptr, out_ptr, count_ptr,
                                seq_len, dim, out_row_stride, count_row_stride,
                                ORDER: tl.constexpr, SPAN: tl.constexpr, HAS_DOC_START: tl.constexpr,
                                BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_start = tl.program_id(1) * seq_len
    cols = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_seq = t < seq_len
    col_ok = cols < dim
    first = tl.zeros([BLOCK_T], dtype=tl.int64)
    if HAS_DOC_START:
        first = tl.load(doc_start_ptr + row_start + t, mask=in_seq, other=0)

    total = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    count = tl.zeros([BLOCK_T], dtype=tl.float32)
    for k in range(SPAN):  # the n-gram ending k positions back
        end = t - k
        kid, valid = _kmer_id(ids_ptr, codes_ptr, vocab_size, row_start, end, seq_len, ORDER)
        valid = valid & in_seq & (end >= first)
        rows = tl.load(table_ptr + kid.to(tl.int64)[:, None] * dim + cols[None, :],
                       mask=valid[:, None] & col_ok[None, :], other=0.0)
        total += rows.to(tl.float32)  # bf16 rows are widened before any arithmetic
        count += valid.to(tl.float32)

    mean = total / tl.maximum(count, 1.0)[:, None]
    out_rows = (row_start + t).to(tl.int64)
    tl.store(out_ptr + out_rows[:, None] * out_row_stride + cols[None, :], mean.to(out_ptr.dtype.element_ty),
             mask=in_seq[:, None] & col_ok[None, :])
    if tl.program_id(2) == 0:
        tl.store(count_ptr + out_rows * count_row_stride, count, mask=in_seq)


@triton.jit
def kmer_window_mean_bwd_kernel(ids_ptr, codes_ptr, vocab_size, doc_start_ptr, grad_out_ptr, count_ptr, grad_ptr,
                                n_tokens, seq_len, dim, grad_out_row_stride, count_row_stride, chunk,
                                ORDER: tl.constexpr, SPAN: tl.constexpr, HAS_DOC_START: tl.constexpr,
                                LOCAL_ROWS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    chunk_start = tl.program_id(0) * chunk
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < dim
    if LOCAL_ROWS > 0:
        table_rows = tl.arange(0, LOCAL_ROWS)
        table_grad = tl.zeros([LOCAL_ROWS, BLOCK_D], dtype=tl.float32)

    for block_start in range(chunk_start, chunk_start + chunk, BLOCK_T):
        p = block_start + tl.arange(0, BLOCK_T)  # flat index of the n-gram end over all sequences
        row_start = (p // seq_len) * seq_len
        end = p - row_start
        kid, valid = _kmer_id(ids_ptr, codes_ptr, vocab_size, row_start, end, seq_len, ORDER)
        valid = valid & (p < n_tokens)

        ngram_grad = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)  # G(j)
        for k in range(SPAN):  # the output positions t = j + k whose window holds this n-gram
            t = end + k
            reaches = valid & (t < seq_len)
            if HAS_DOC_START:
                reaches = reaches & (end >= tl.load(doc_start_ptr + row_start + t, mask=reaches, other=0))
            out_rows = (row_start + t).to(tl.int64)
            count = tl.load(count_ptr + out_rows * count_row_stride, mask=reaches, other=1.0)
            grad_out = tl.load(grad_out_ptr + out_rows[:, None] * grad_out_row_stride + cols[None, :],
                               mask=reaches[:, None] & col_ok[None, :], other=0.0)
            ngram_grad += grad_out.to(tl.float32) / tl.maximum(count, 1.0)[:, None]

        if LOCAL_ROWS > 0:  # segmented sum by table row: onehot(id)^T @ G, in registers
            onehot = ((table_rows[:, None] == kid[None, :]) & valid[None, :]).to(tl.float32)
            table_grad += tl.dot(onehot, ngram_grad, input_precision="ieee")
        else:
            tl.atomic_add(grad_ptr + kid.to(tl.int64)[:, None] * dim + cols[None, :], ngram_grad,
                          mask=valid[:, None] & col_ok[None, :])

    if LOCAL_ROWS > 0:  # this program's partial table gradient, written once
        partial = grad_ptr + tl.program_id(0).to(tl.int64) * LOCAL_ROWS * dim
        tl.store(partial + table_rows[:, None] * dim + cols[None, :], table_grad, mask=col_ok[None, :])


def _blocks(seq_len: int, dim: int, max_block_d: int):
    """(BLOCK_T, BLOCK_D): register-sized tiles on a GPU, large tiles in the interpreter (per-program overhead)."""
    if INTERPRETING:
        return min(max(triton.next_power_of_2(seq_len), 16), 8192), max(triton.next_power_of_2(dim), 16)
    return 64, min(max(triton.next_power_of_2(dim), 16), max_block_d)


def window_mean_forward(input_ids: torch.Tensor, symbol_codes: torch.Tensor, doc_start: Optional[torch.Tensor],
                        table: torch.Tensor, order: int, span: int, out: torch.Tensor, count: torch.Tensor) -> None:
    """Write m_n into `out` ([b*s, d] view, unit column stride) and the valid counts into `count` ([b*s] view)."""
    b, s = input_ids.shape
    d = table.shape[1]
    block_t, block_d = _blocks(s, d, max_block_d=128)
    grid = (triton.cdiv(s, block_t), b, triton.cdiv(d, block_d))
    kmer_window_mean_fwd_kernel[grid](
        input_ids, symbol_codes, symbol_codes.numel(), doc_start if doc_start is not None else input_ids,
        table, out, count, s, d, out.stride(0), count.stride(0),
        ORDER=order, SPAN=span, HAS_DOC_START=doc_start is not None, BLOCK_T=block_t, BLOCK_D=block_d)


def window_mean_backward(input_ids: torch.Tensor, symbol_codes: torch.Tensor, doc_start: Optional[torch.Tensor],
                         grad_out: torch.Tensor, count: torch.Tensor, rows: int, order: int, span: int) -> torch.Tensor:
    """The fp32 gradient [rows, d] of one table from its output-gradient slice `grad_out` ([b*s, d] view)."""
    b, s = input_ids.shape
    n_tokens, d = grad_out.shape
    block_t, block_d = _blocks(s, d, max_block_d=64)  # narrower: the local table gradient also lives in registers
    local_rows = max(triton.next_power_of_2(rows), 16) if rows <= LOCAL_ROWS_MAX else 0
    chunk = block_t * (1 if INTERPRETING else 16)
    n_chunks = triton.cdiv(n_tokens, chunk)
    if local_rows:
        grad = torch.empty(n_chunks, local_rows, d, dtype=torch.float32, device=grad_out.device)
    else:
        grad = torch.zeros(rows, d, dtype=torch.float32, device=grad_out.device)
    kmer_window_mean_bwd_kernel[(n_chunks, triton.cdiv(d, block_d))](
        input_ids, symbol_codes, symbol_codes.numel(), doc_start if doc_start is not None else input_ids,
        grad_out, count, grad, n_tokens, s, d, grad_out.stride(0), count.stride(0), chunk,
        ORDER=order, SPAN=span, HAS_DOC_START=doc_start is not None, LOCAL_ROWS=local_rows,
        BLOCK_T=block_t, BLOCK_D=block_d)
    return grad[:, :rows].sum(dim=0) if local_rows else grad
