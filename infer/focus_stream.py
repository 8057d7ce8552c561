"""Streaming FOCUS inference: sequences of any length, window by window, with an O(L/k + W) KV cache.

Bases are fed in pieces that never cross a window end; the summary token after every k-th base is inserted here
(global count, so any way of cutting the input gives the same positions as the parallel forward). Each piece
attends to the cached K/V plus itself under the trained visibility rule; at every window end the base K/V are
evicted and only the summaries (all, or the last `focus.summary_memory`) are kept. With compress=False the same
loop runs the uncompressed model with a full KV cache (no summaries, no eviction): the baseline for memory and
latency, and a check of the cache machinery (it must equal the base model's own forward).
"""
from __future__ import annotations

from typing import List, Optional

import torch

from nucleotron.model.focus.adapter import FocusKVCache, FocusModel
from nucleotron.model.focus.layout import Layout, insert_summaries
from nucleotron.model.focus.mask import MaskSpec, dense_mask

NEVER = 1 << 62  # a cadence / window no sequence reaches: no summaries, no eviction


class FocusStreamer:
    """Feeds bases to a FocusModel through a compressible KV cache; batch rows advance together."""

    def __init__(self, model: FocusModel, compress: bool = True):
        self.model, self.compress = model, compress
        self.spec = model.mask_spec() if compress else MaskSpec(k=NEVER, window=NEVER)
        self.reset()

    def reset(self) -> None:
        device = next(self.model.parameters()).device
        self.cache = FocusKVCache(layout=Layout.empty(device))  # kept positions live where the model runs
        self.bases_seen = 0
        self.max_entries = 0  # the most K/V positions per layer held at once (just before an eviction)
        self.max_kv_bytes = 0

    @torch.no_grad()
    def feed(self, base_ids: torch.Tensor) -> torch.Tensor:
        """Append bases [b, n]; returns the logits at their positions [b, n, V] (position i predicts base i + 1)."""
        out: List[torch.Tensor] = []
        done = 0
        while done < base_ids.shape[1]:
            room = self.spec.window - self.bases_seen % self.spec.window
            piece = base_ids[:, done:done + room]
            out.append(self._piece(piece))
            done += piece.shape[1]
        return torch.cat(out, dim=1)

    def _piece(self, piece: torch.Tensor) -> torch.Tensor:
        spec, model = self.spec, self.model
        ids, layout = insert_summaries(piece, spec.k, model.cfg.summary_token_id, start=self.bases_seen)
        mask = dense_mask(layout, self.cache.layout.cat(layout), spec)
        logits = model.run(ids, layout, mask, spec.k, cache=self.cache)
        self.cache.layout = self.cache.layout.cat(layout)
        self.max_entries = max(self.max_entries, self.cache.entries())
        self.max_kv_bytes = max(self.max_kv_bytes, self.cache.kv_bytes())
        self.bases_seen += piece.shape[1]
        if self.bases_seen % spec.window == 0:
            self._evict()
        return logits[:, ~layout.is_summary]

    def _evict(self) -> None:
        """Window end: keep the summaries the next window may see (R2: all earlier ones, or the last N)."""
        layout, spec = self.cache.layout, self.spec
        kept = layout.is_summary.clone()
        if spec.summary_memory is not None:
            first_visible = self.bases_seen // spec.k - spec.summary_memory
            kept &= layout.base_index // spec.k >= first_visible
        self.cache.keep(kept)

    @torch.no_grad()
    def score(self, base_ids: torch.Tensor, chunk: Optional[int] = None) -> torch.Tensor:
        """Per-base log-likelihoods [b, L - 1]: log p(x_{i+1} | x_1..x_i), like the uncompressed scorer."""
        self.reset()
        chunk = chunk or (self.spec.window if self.compress else 1024)
        logits = torch.cat([self.feed(base_ids[:, s:s + chunk]) for s in range(0, base_ids.shape[1], chunk)], 1)
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        return logp.gather(-1, base_ids[:, 1:, None]).squeeze(-1)

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, new_bases: int, allowed_ids: Optional[List[int]] = None,
                 temperature: float = 1.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Sample `new_bases` tokens after `prompt` [b, p]; summaries are inserted by feed() and never emitted.
        allowed_ids: restrict sampling to these ids (e.g. A, C, G, T); temperature 0 = greedy."""
        self.reset()
        logits = self.feed(prompt)[:, -1]
        out = []
        for _ in range(new_bases):
            logits = logits.float()
            block = torch.full_like(logits, float("-inf"))
            keep = allowed_ids if allowed_ids is not None else [i for i in range(logits.shape[-1])
                                                                 if i != self.model.cfg.summary_token_id]
            block[:, keep] = 0.0
            logits = logits + block
            if temperature == 0:
                token = logits.argmax(-1)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            out.append(token)
            logits = self.feed(token[:, None])[:, -1]
        return torch.stack(out, dim=1)
