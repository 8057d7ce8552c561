"""`nucleotron eval probe MODEL`: frozen features + L2 logistic regression (penalty chosen by k-fold CV) -> JSON.

    nucleotron eval probe runs/tiny --task configs/tasks/nt-splice-sites-all.yaml --out probe.json
    nucleotron eval probe runs/tiny --train train.csv --test test.csv --out probe.json

Features are the mean-pooled final-layer embeddings (nucleotron embed). The probe is fitted on the standardised
train features by Newton's method (binary; one-vs-rest for more classes); the penalty with the lowest mean held-out
log-loss over stratified folds is refitted on the whole train split. Reported on the test split: accuracy, MCC
(multi-class: Gorodkin's R_K) and, for two classes, ROC AUC; with the dataset's and the checkpoint's identity.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .sequences import InputError, read_table

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


# ---------------------------------------------------------------- logistic regression and metrics


def fit_binary(x: torch.Tensor, y: torch.Tensor, l2: float, steps: int = 50) -> torch.Tensor:
    """[features + 1] weights (bias last) minimising mean log-loss + l2/2 * |w|^2 (bias unpenalised): Newton's
    method with step halving, float64. Newton rather than torch.optim: no optimizer machinery to import, and a
    handful of exact steps instead of hundreds of line-search evaluations."""
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)
    y = y.to(x.dtype)
    penalty = torch.full((xb.shape[1],), l2, dtype=x.dtype, device=x.device)
    penalty[-1] = 0.0

    def objective(w):
        z = xb @ w
        return (torch.nn.functional.softplus(z) - y * z).mean() + 0.5 * (penalty * w * w).sum()

    w = torch.zeros(xb.shape[1], dtype=x.dtype, device=x.device)
    value = objective(w)
    for _ in range(steps):
        p = torch.sigmoid(xb @ w)
        grad = xb.T @ (p - y) / len(y) + penalty * w
        if grad.abs().max() < 1e-10:
            break
        hessian = (xb.T * (p * (1 - p))) @ xb / len(y) + torch.diag(penalty + 1e-10)
        step = torch.linalg.solve(hessian, grad)
        scale = 1.0
        while scale > 1e-6:
            candidate = w - scale * step
            new_value = objective(candidate)
            if new_value <= value:
                break
            scale /= 2
        w, value = candidate, new_value
    return w


def fit_logistic(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float) -> torch.Tensor:
    """[features + 1, columns]: one binary model for two classes (column = P(class 1)), else one per class
    (one-vs-rest)."""
    if classes == 2:
        return fit_binary(x, y == 1, l2)[:, None]
    return torch.stack([fit_binary(x, y == c, l2) for c in range(classes)], dim=1)


def class_probabilities(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[n, classes]: P(class) of the binary model, or the one-vs-rest probabilities normalised."""
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)
    p = torch.sigmoid(xb @ weights)
    if weights.shape[1] == 1:
        return torch.cat([1 - p, p], dim=1)
    return p / p.sum(dim=1, keepdim=True).clamp(min=1e-300)


def folds_of(y: np.ndarray, k: int, seed: int) -> List[np.ndarray]:
    """Stratified folds: each class's shuffled indices dealt round-robin."""
    rng = np.random.default_rng(seed)
    folds: List[List[int]] = [[] for _ in range(k)]
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        for position, index in enumerate(members):
            folds[position % k].append(int(index))
    return [np.array(sorted(f)) for f in folds]


def choose_l2(x: torch.Tensor, y: torch.Tensor, classes: int, k: int, seed: int) -> Tuple[float, Dict[str, float]]:
    folds = folds_of(y.numpy(), k, seed)
    losses = {}
    for l2 in L2_GRID:
        total = 0.0
        for held in folds:
            train = np.setdiff1d(np.arange(len(y)), held)
            probs = class_probabilities(x[held], fit_logistic(x[train], y[train], classes, l2))
            total += float(-torch.log(probs[torch.arange(len(held)), y[held]].clamp(min=1e-300)).sum())
        losses[f"{l2:g}"] = total / len(y)
    best = min(L2_GRID, key=lambda l2: losses[f"{l2:g}"])
    return best, losses


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive outranks a random negative (ties count one half)."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    ordered = scores[order]
    for value in np.unique(ordered[1:][np.diff(ordered) == 0]):  # tied scores share their mean rank
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def mcc(true: np.ndarray, predicted: np.ndarray, classes: int) -> float:
    """Matthews correlation; for more than two classes Gorodkin's R_K from the confusion matrix."""
    confusion = np.zeros((classes, classes), dtype=np.float64)
    np.add.at(confusion, (true, predicted), 1)
    total, correct = confusion.sum(), np.trace(confusion)
    true_counts, predicted_counts = confusion.sum(axis=1), confusion.sum(axis=0)
    numerator = correct * total - true_counts @ predicted_counts
    denominator = np.sqrt((total ** 2 - predicted_counts @ predicted_counts) * (total ** 2 - true_counts @ true_counts))
    return float(numerator / denominator) if denominator > 0 else 0.0


def probe(train_x: np.ndarray, train_y: Sequence, test_x: np.ndarray, test_y: Sequence, folds: int = 5,
          seed: int = 0) -> dict:
    """Fit on train (L2 by CV), report on test."""
    labels = sorted(set(train_y) | set(test_y), key=str)
    index = {label: i for i, label in enumerate(labels)}
    ytr = torch.tensor([index[v] for v in train_y])
    yte = np.array([index[v] for v in test_y])
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-8
    xtr = torch.from_numpy((train_x - mean) / std).double()
    xte = torch.from_numpy((test_x - mean) / std).double()
    l2, cv = choose_l2(xtr, ytr, len(labels), folds, seed)
    probs = class_probabilities(xte, fit_logistic(xtr, ytr, len(labels), l2)).numpy()
    predicted = probs.argmax(axis=1)
    metrics = {"accuracy": float((predicted == yte).mean()), "mcc": mcc(yte, predicted, len(labels))}
    if len(labels) == 2:
        metrics["auc"] = roc_auc(probs[:, 1], yte == 1)
    return {"metrics": metrics, "l2": l2, "cv_log_loss": cv, "labels": [str(v) for v in labels],
            "n_train": len(train_y), "n_test": len(test_y)}


# ---------------------------------------------------------------- datasets


def load_task(path: str) -> dict:
    import yaml

    from nucleotron.configs import resolve_config_path

    with open(resolve_config_path(path)) as handle:
        task = yaml.safe_load(handle)
    missing = [k for k in ("dataset", "train_split", "test_split") if k not in task]
    if missing:
        raise InputError(f"{path}: task preset lacks {', '.join(missing)}")
    return task


def hf_split(dataset: str, config: Optional[str], split: str, sequence_column: str, label_column: str):
    import datasets

    data = datasets.load_dataset(dataset, config, split=split)
    for column in (sequence_column, label_column):
        if column not in data.column_names:
            raise InputError(f"{dataset} ({config or 'default'}, {split}): no column {column!r} "
                             f"(columns: {', '.join(data.column_names)})")
    return list(map(str, data[sequence_column])), list(data[label_column])


def local_split(path: str, sequence_column: str, label_column: str):
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    table = read_table(path, sequence_column, extra_columns=[label_column])
    return table["sequence"], table[label_column]


def held_out(sequences: List[str], labels: List, fraction: float, seed: int):
    """A stratified test split of `fraction` when the dataset has none."""
    y = np.array([str(v) for v in labels])
    test = set(folds_of(y, max(2, round(1 / fraction)), seed)[0].tolist())
    pick = lambda keep: ([s for i, s in enumerate(sequences) if (i in test) == keep],  # noqa: E731
                         [v for i, v in enumerate(labels) if (i in test) == keep])
    return pick(False), pick(True)


def main(argv: List[str]) -> int:
    from .score import add_model_arguments

    parser = argparse.ArgumentParser(prog="nucleotron eval", description="Downstream evaluation.")
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("probe", help=__doc__.split("\n\n")[0])
    add_model_arguments(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", help="preset YAML (configs/tasks/*.yaml): a public dataset, its splits, columns")
    source.add_argument("--dataset", help="Hugging Face dataset name (downloaded by `datasets`)")
    source.add_argument("--train", help="local CSV/TSV/Parquet with sequence and label columns")
    p.add_argument("--dataset-config", default=None, help="the HF dataset's configuration (subset) name")
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="test")
    p.add_argument("--test", help="local test file (default: a stratified --test-fraction of --train)")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--sequence-column", default=None, help="default 'sequence'")
    p.add_argument("--label-column", default=None, help="default 'label'")
    p.add_argument("--layer", default="final", help="embedding layer: 'final' or 0..num_layers")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds for the L2 penalty")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output JSON")
    args = p.parse_args(argv[1:]) if argv and argv[0] == "probe" else parser.parse_args(argv)

    from nucleotron.configs.files import write_json_atomic

    from .checkpoint import CheckpointError
    from .embed import embed
    from .loading import load_model

    try:
        identity: dict
        if args.task:
            task = load_task(args.task)
            seq_col, label_col = task.get("sequence_column", "sequence"), task.get("label_column", "label")
            train = hf_split(task["dataset"], task.get("config"), task["train_split"], seq_col, label_col)
            test = hf_split(task["dataset"], task.get("config"), task["test_split"], seq_col, label_col)
            identity = {"task": args.task, **{k: task.get(k) for k in ("name", "dataset", "config", "train_split",
                                                                      "test_split", "revision")}}
        elif args.dataset:
            seq_col, label_col = args.sequence_column or "sequence", args.label_column or "label"
            train = hf_split(args.dataset, args.dataset_config, args.train_split, seq_col, label_col)
            test = hf_split(args.dataset, args.dataset_config, args.test_split, seq_col, label_col)
            identity = {"dataset": args.dataset, "config": args.dataset_config, "train_split": args.train_split,
                        "test_split": args.test_split}
        else:
            seq_col, label_col = args.sequence_column or "sequence", args.label_column or "label"
            train = local_split(args.train, seq_col, label_col)
            if args.test:
                test = local_split(args.test, seq_col, label_col)
            else:
                train, test = held_out(*train, args.test_fraction, args.seed)
            identity = {"train": os.path.abspath(args.train), "test": os.path.abspath(args.test) if args.test
                        else f"stratified {args.test_fraction:g} of train (seed {args.seed})"}
        lm = load_model(args.model, args.device)
        features = [np.stack(embed(lm, seqs, args.layer, "mean", args.batch_size, progress=True))
                    for seqs, _ in (train, test)]
        result = probe(features[0], train[1], features[1], test[1], args.folds, args.seed)
        result = {"dataset": identity, "checkpoint": lm.identity, "layer": args.layer, **result}
        write_json_atomic(args.out, result)
    except (InputError, CheckpointError) as err:
        print(f"nucleotron eval probe: {err}", file=sys.stderr)
        return 2
    print(f"probe: {result['metrics']} -> {args.out}")
    return 0
