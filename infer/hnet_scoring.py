"""Log-likelihoods and per-stage boundary probabilities of an H-Net (dnaHNet) model, two ways that must agree.

`parallel`: one forward over right-padded batches (the validity mask keeps padding from ever being a boundary; the
model is causal, so padding after a sequence changes nothing before it). `step`: the recurrent decoding path, one
token at a time, batch 1 (HNetLM.step: Mamba-2 and attention caches, the router's previous state, the dechunk EMA);
it is what generation runs, and scoring through it checks that path against the forward.

Boundaries: stage 1 routes every position of the input; stage s + 1 routes only the positions stage s selected, so
its trace lists those positions (in input coordinates) with their probability p and whether it selected them
(p > 0.5). The interpretability analysis (codon periodicity of stage-1 boundaries) reads these traces.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
import torch

MODES = ("parallel", "step")


@dataclass
class StageTrace:
    """One routing stage over one token list: the positions it routed (indices into the list), p and b there."""

    positions: np.ndarray   # int64
    prob: np.ndarray        # float32
    selected: np.ndarray    # bool


@dataclass
class HNetScore:
    log_likelihood: float          # sum over t >= 1 of log P(x_t | x_<t), natural log
    stages: List[StageTrace]       # outermost first


def _traces(probs: Sequence[torch.Tensor], selected: Sequence[torch.Tensor], length: int) -> List[StageTrace]:
    """Per-stage (p, b) rows of one sequence from the routers' padded outputs (each stage's first entries are the
    chunks the stage before selected, in order)."""
    traces, positions = [], np.arange(length)
    for prob, chosen in zip(probs, selected):
        n = len(positions)
        p, b = prob[:n].float().cpu().numpy(), chosen[:n].cpu().numpy().astype(bool)
        traces.append(StageTrace(positions, p, b))
        positions = positions[b]
    return traces


@torch.no_grad()
def parallel_scores(model, token_lists: Sequence[np.ndarray], batch_size: int, pad: int,
                    progress: str = "") -> List[HNetScore]:
    """Scores through HNetLM.forward, right-padded batches of similar length."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
    result: List[HNetScore] = [None] * len(token_lists)   # type: ignore[list-item]
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=progress or "scoring", unit="batch", disable=not progress or len(starts) < 2):
        chosen = order[start:start + batch_size]
        length = max(len(token_lists[i]) for i in chosen)
        ids = torch.full((len(chosen), length), pad, dtype=torch.long)
        valid = torch.zeros((len(chosen), length), dtype=torch.bool)
        for row, i in enumerate(chosen):
            ids[row, :len(token_lists[i])] = torch.from_numpy(np.asarray(token_lists[i], dtype=np.int64))
            valid[row, :len(token_lists[i])] = True
        ids, valid = ids.to(device), valid.to(device)
        out = model(ids, valid)
        picked = torch.log_softmax(out.logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        sums = (picked * valid[:, 1:]).double().sum(dim=1).cpu().tolist()
        for row, i in enumerate(chosen):
            stages = _traces([r.prob[row] for r in out.routers], [r.boundary[row] for r in out.routers],
                             len(token_lists[i]))
            result[i] = HNetScore(sums[row], stages)
    return result


@torch.no_grad()
def step_scores(model, token_lists: Sequence[np.ndarray], progress: str = "") -> List[HNetScore]:
    """Scores through HNetLM.step, one sequence and one token at a time (every token is stepped, the last too, so
    its boundary probabilities are known)."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    stages = len(model.cfg.target_ratios)
    result = []
    for tokens in tqdm(token_lists, desc=progress or "scoring", unit="seq", disable=not progress or len(token_lists) < 2):
        ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64), device=device)
        state = model.empty_state(device)
        picked = []
        rows = [([], [], []) for _ in range(stages)]     # per stage: positions, p, b
        for t in range(len(ids)):
            out = model.step(ids[t].view(1, 1), state)
            for s, router in enumerate(out.routers):       # the stages this position reached
                rows[s][0].append(t)
                rows[s][1].append(float(router.prob[0, 0]))
                rows[s][2].append(bool(router.boundary[0, 0]))
            if t + 1 < len(ids):
                picked.append(torch.log_softmax(out.logits[0, 0].float(), dim=-1)[ids[t + 1]])
        total = float(torch.stack(picked).double().sum()) if picked else 0.0
        result.append(HNetScore(total, [StageTrace(np.asarray(p, dtype=np.int64), np.asarray(q, dtype=np.float32),
                                                   np.asarray(b, dtype=bool)) for p, q, b in rows]))
    return result


def hnet_scores(model, token_lists: Sequence[np.ndarray], batch_size: int, pad: int, mode: str,
                progress: str = "") -> List[HNetScore]:
    if mode == "parallel":
        return parallel_scores(model, token_lists, batch_size, pad, progress)
    if mode == "step":
        return step_scores(model, token_lists, progress)
    raise ValueError(f"mode {mode!r}: use one of {MODES}")
