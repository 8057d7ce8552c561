"""The Gengram module (shared/spec/gengram.md section 3): windowed k-mer memory, scalar gate, short conv.

h [s, b, H] (Megatron layout) and input_ids [b, s] in; the new residual h + y out, where
    m = concat_n windowed mean of k-mer table rows      (nucleotron.kernels, fp32 accumulation)
    alpha = sigmoid(signed_sqrt(<RMSNorm_q(h), RMSNorm_k(W_K m)> / sqrt(H)))
    u = alpha * W_V m;  y = u + SiLU(causal dilated depthwise conv(u)).
The output at t depends on tokens t-(W-1)-(k-1)*dilation .. t only (t-38..t with the defaults).

m is never built: key and value come straight from the tables projected through W_K and W_V
(`nucleotron.kernels.kmer_key_value`, the same function), and the gate and the conv + residual are two
elementwise-fusable functions (`nucleotron.kernels.gate`, compiled on a GPU). `features` still returns m for
inspection.

Sequence parallelism (spec section 5): h arrives as this tensor-parallel rank's slice of the sequence while every
rank has the full input_ids. Each rank computes the features of its own positions from the ids (reading the W-1
tokens before its slice, no communication), and takes the conv's (kernel-1)*dilation = 18 positions of u before its
slice from the previous rank. Every parameter is marked `sequence_parallel`, so megatron's finalize_model_grads sums
the per-slice gradients over the tensor-parallel group.

Optimizer hook: every k-mer table is an nn.Parameter carrying `param.gengram_table = True`, the key on which
train/optimizer.py gives the tables their own learning rate and weight decay (cfg.table_lr_mult,
cfg.table_weight_decay).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.distributed as dist
from torch import nn

from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

from nucleotron.configs import GengramConfig
from nucleotron.kernels import document_starts, kmer_key_value, kmer_window_mean
from nucleotron.kernels.gate import GATE_FLOOR, RMSNORM_EPS, conv_residual, fused, gated_value  # noqa: F401

SYMBOLS = ("A", "C", "G", "T", "N")  # codes 0..4, the table layout of the released checkpoints


def symbol_codes_from_vocab(vocab: Dict[str, int], vocab_size: int) -> torch.LongTensor:
    """[vocab_size] int64: 0..4 for the ids of A, C, G, T, N, -1 for every other token (EOD, PAD, ...).

    `vocab` is the tokenizer's token -> id map (the pack manifest's vocabulary). N may be absent.
    """
    missing = [s for s in SYMBOLS[:4] if s not in vocab]
    if missing:
        raise ValueError(f"the vocabulary has no token for {missing}: Gengram needs ids for A, C, G and T")
    codes = torch.full((vocab_size,), -1, dtype=torch.long)
    for code, symbol in enumerate(SYMBOLS):
        if symbol not in vocab:
            continue
        token_id = vocab[symbol]
        if not 0 <= token_id < vocab_size:
            raise ValueError(f"token {symbol!r} has id {token_id}, outside the vocabulary of size {vocab_size}")
        codes[token_id] = code
    return codes


class CausalDepthwiseConv(nn.Module):
    """The short conv's parameters: a depthwise Conv1d over the sequence (no bias) whose taps reach t, t-dilation, ...
    `nucleotron.kernels.gate.conv_residual` applies it causally (left padding `left_pad`); the Conv1d module is kept
    for its weight's checkpoint key and init."""

    def __init__(self, channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.left_pad = (kernel_size - 1) * dilation
        self.dilation = dilation
        self.conv = nn.Conv1d(channels, channels, kernel_size, dilation=dilation, groups=channels, bias=False)


def previous_slice_tail(x: torch.Tensor, length: int, group: dist.ProcessGroup) -> torch.Tensor:
    """The last `length` positions of the previous rank's sequence slice ([length, b, C]); zeros on the first rank.

    Every rank all-gathers the tails (megatron's sequence-parallel gather, whose backward reduce-scatters the
    gradient back to the owner) and every rank's result depends on the gather, so all ranks join the backward too.
    """
    if x.shape[0] < length:
        raise ValueError(f"sequence-parallel Gengram needs at least {length} positions per tensor-parallel rank "
                         f"(the short conv's reach), got {x.shape[0]}: use a longer sequence or a smaller TP size")
    tails = gather_from_sequence_parallel_region(x[-length:].contiguous(), group=group)
    before = torch.cat([torch.zeros_like(x[-length:]), tails])  # block r: what precedes rank r's slice
    rank = group.rank()
    return before[rank * length:(rank + 1) * length]


class Gengram(nn.Module):
    """One active Gengram layer: returns hidden + y. `last_gate_mean` holds the mean gate of the last forward."""

    def __init__(self, cfg: GengramConfig, hidden_size: int, symbol_codes: torch.Tensor,
                 eod_id: Optional[int] = None, init_std: float = 0.01,
                 sequence_parallel_group: Optional[dist.ProcessGroup] = None):
        """symbol_codes: see symbol_codes_from_vocab. eod_id: needed when cfg.reset_window_at_eod.
        init_std: table std of the 'engram' init (the 'reference' init uses N(0, 1) as the released code).
        sequence_parallel_group: the tensor-parallel group when h arrives split along the sequence."""
        super().__init__()
        if cfg.reset_window_at_eod and eod_id is None:
            raise ValueError("reset_window_at_eod needs the EOD token id (eod_id)")
        if cfg.init not in ("reference", "engram"):
            raise ValueError(f"unknown Gengram init {cfg.init!r}: expected 'reference' or 'engram'")
        self.orders = tuple(cfg.orders)
        self.window = cfg.window
        self.context = (cfg.window if cfg.window is not None else max(cfg.orders)) - 1  # ids before t that m(t) reads
        self.sequence_parallel_group = sequence_parallel_group
        self.eod_id = eod_id if cfg.reset_window_at_eod else None
        self.register_buffer("symbol_codes", symbol_codes.to(torch.long), persistent=False)
        d, features = cfg.table_dim, len(cfg.orders) * cfg.table_dim

        self.tables = nn.ParameterList([nn.Parameter(torch.empty(5 ** n, d)) for n in self.orders])
        self.key_proj = nn.Linear(features, hidden_size, bias=False)
        self.value_proj = nn.Linear(features, hidden_size, bias=False)
        self.norm_q = nn.RMSNorm(hidden_size, eps=RMSNORM_EPS)
        self.norm_k = nn.RMSNorm(hidden_size, eps=RMSNORM_EPS)
        dilation = cfg.conv_dilation or max(cfg.orders)
        self.short_conv = CausalDepthwiseConv(hidden_size, cfg.conv_kernel, dilation)

        for table in self.tables:
            nn.init.normal_(table, std=1.0 if cfg.init == "reference" else init_std)
            table.gengram_table = True
        if cfg.init == "engram":  # the short conv starts at zero: y = u at step 0
            nn.init.zeros_(self.short_conv.conv.weight)
        if sequence_parallel_group is not None:
            for param in self.parameters():
                param.sequence_parallel = True
        self.last_gate_mean: Optional[torch.Tensor] = None

    def doc_start(self, input_ids: torch.Tensor) -> Optional[torch.Tensor]:
        return document_starts(input_ids, self.eod_id) if self.eod_id is not None else None

    def features(self, input_ids: torch.Tensor) -> torch.Tensor:
        """m [b, s, len(orders) * d]: the windowed k-mer means (reset at EOD if configured). Not on the forward path."""
        return kmer_window_mean(input_ids, list(self.tables), self.symbol_codes, self.window,
                                orders=self.orders, doc_start=self.doc_start(input_ids))

    def key_value(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[s, b, 2H]: W_K m and W_V m side by side, from the projected tables."""
        return kmer_key_value(input_ids, list(self.tables), [self.key_proj.weight, self.value_proj.weight],
                              self.symbol_codes, self.window, orders=self.orders,
                              doc_start=self.doc_start(input_ids))

    def slice_start(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> int:
        """The first position of h: 0, or this rank's offset when h is a sequence-parallel slice."""
        group = self.sequence_parallel_group
        ranks = 1 if group is None else group.size()
        if input_ids.shape[1] != hidden.shape[0] * ranks:
            raise ValueError(f"input_ids has {input_ids.shape[1]} positions but h has {hidden.shape[0]}"
                             + (f" per rank on {ranks} sequence-parallel ranks" if group is not None else ""))
        return 0 if group is None else group.rank() * hidden.shape[0]

    def forward(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        start, length = self.slice_start(hidden, input_ids), hidden.shape[0]
        first = max(start - self.context, 0)  # the features of h's positions read ids from `first` on
        key_value = self.key_value(input_ids[:, first:start + length])[start - first:].to(hidden.dtype)
        key, value = key_value.split(hidden.shape[-1], dim=-1)
        u, alpha = fused(gated_value, hidden.is_cuda)(hidden, key, value, self.norm_q, self.norm_k)
        self.last_gate_mean = alpha.detach().float().mean()
        before = None
        if self.sequence_parallel_group is not None:
            before = previous_slice_tail(u, self.short_conv.left_pad, self.sequence_parallel_group)
        return fused(conv_residual, hidden.is_cuda)(hidden, u, self.short_conv.conv.weight, self.short_conv.dilation,
                                                    before)
