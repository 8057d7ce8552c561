"""Who sees whom: the two visibility rules of the FOCUS paper, on Layout descriptions of queries and keys.

R2 "window" (paper appendix A eq. 3, the released streaming script; the default): a position sees every earlier
position of its own window (bases and summaries) and the summaries of earlier windows (with summary_memory=N, only
the last N of those).
R1 "kmer" (paper section 3.2, Fig. 1): a position sees the earlier bases of its own k-mer in its window, the earlier
summaries of its window, and the boundary summary (the last summary before its window).
Both are strictly causal. The same expression builds the dense boolean mask (CPU, and the streaming path's
[chunk, cache + chunk] mask) and the flex_attention mask_mod on GPU, so training and streaming cannot disagree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .layout import Layout

RULES = ("window", "kmer")


@dataclass(frozen=True)
class MaskSpec:
    k: int
    window: int
    rule: str = "window"
    summary_memory: Optional[int] = None  # None: all earlier summaries; N: the last N before the query's window

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"focus.raw_visibility={self.rule!r} is not one of: {', '.join(RULES)}")


def visible(q_base, q_summary, k_base, k_summary, spec: MaskSpec):
    """Elementwise (broadcasting) visibility of key (k_base, k_summary) from query (q_base, q_summary)."""
    k, W = spec.k, spec.window
    q_pos = q_base + q_base // k + q_summary.long()
    k_pos = k_base + k_base // k + k_summary.long()
    q_win, k_win = q_base // W, k_base // W
    same_window = (k_pos <= q_pos) & (k_win == q_win)
    earlier_window_summary = k_summary & (k_win < q_win)
    summaries_before_window = (q_win * W) // k  # ordinals 0..this-1 lie in earlier windows
    if spec.rule == "window":
        if spec.summary_memory is not None:
            earlier_window_summary = earlier_window_summary & (k_base // k >= summaries_before_window
                                                               - spec.summary_memory)
        return same_window | earlier_window_summary
    own_kmer_base = ~k_summary & (k_base // k == q_base // k)
    boundary = earlier_window_summary & (k_base // k == summaries_before_window - 1)
    return (same_window & (k_summary | own_kmer_base)) | boundary


def dense_mask(query: Layout, key: Layout, spec: MaskSpec) -> torch.Tensor:
    """[len(query), len(key)] bool, True = may attend (SDPA's convention)."""
    return visible(query.base_index[:, None], query.is_summary[:, None], key.base_index[None, :],
                   key.is_summary[None, :], spec)


def flex_available(device: torch.device) -> bool:
    """flex_attention block masks: CUDA only (the CPU path uses boolean-mask SDPA)."""
    if device.type != "cuda":
        return False
    try:
        from torch.nn.attention.flex_attention import create_block_mask  # noqa: F401
    except ImportError:
        return False
    return True


def block_mask(query: Layout, key: Layout, spec: MaskSpec):
    """A flex_attention BlockMask for the same rule: fully masked blocks are skipped (R2 is block-sparse)."""
    from torch.nn.attention.flex_attention import create_block_mask

    qb, qs, kb, ks = query.base_index, query.is_summary, key.base_index, key.is_summary

    def mask_mod(batch, head, q_idx, kv_idx):
        return visible(qb[q_idx], qs[q_idx], kb[kv_idx], ks[kv_idx], spec)

    return create_block_mask(mask_mod, B=None, H=None, Q_LEN=len(query), KV_LEN=len(key), device=qb.device)
