"""Count-based Markov references: what an order-k model of counted contexts scores, in bits per base, on the very
samples a validation scores, so a trained model's number has rulers beside it.

Order 0 is the base composition alone (a model that learned nothing else sits there); low orders are what short-range
statistics give; a high order (12) memorises the training split's repeats and duplications, a rough bound on what
memory of them is worth. `nucleotron quickstart` prints them under its results and draws them on its plot;
benchmarks/genome_references.py computes them for FASTA files.

The model: symbols A, C, G, T, N (codes 0-4; any other token, EOD above all, ends a context: no context reaches
across a document boundary or before a sample's start, as for the network). A base is predicted from the longest
context it has, up to the order, with add-alpha smoothing toward the training composition p0 (itself add-one smoothed):
    p(b | c) = (count(c, b) + alpha * p0(b)) / (count(c) + alpha).
(Interpolating each order toward the one below, Witten-Bell style, scores worse than composition from order ~8 on
at this data size: sparse contexts seen once or twice compound their mistakes.)
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

SYMBOLS = ("A", "C", "G", "T", "N")
BREAK = -1  # a code that ends every context (EOD, PAD, anything not in SYMBOLS)


def symbol_codes(vocab: Dict[str, int], soft_mask_bit: int = None) -> np.ndarray:
    """Token id -> symbol code (0-4, `BREAK` for every other id), for ids 0..255 and, with a soft-mask bit, their
    masked forms too."""
    missing = [s for s in SYMBOLS if s not in vocab]
    if missing:
        raise ValueError(f"the vocabulary has no token for {', '.join(missing)} (has {sorted(vocab)})")
    largest = max(vocab.values())
    size = max(256, largest + 1, (largest | soft_mask_bit) + 1 if soft_mask_bit else 0)
    lut = np.full(size, BREAK, dtype=np.int64)
    for code, symbol in enumerate(SYMBOLS):
        lut[vocab[symbol]] = code
        if soft_mask_bit:
            lut[vocab[symbol] | soft_mask_bit] = code
    return lut


def _context_lengths(codes: np.ndarray) -> np.ndarray:
    """For each position t: how many symbols stand without a break right before it (0 at a sequence's start)."""
    valid = codes >= 0
    run = np.zeros(len(codes) + 1, dtype=np.int64)
    positions = np.arange(1, len(codes) + 1)
    last_break = np.maximum.accumulate(np.where(valid, 0, positions))  # 1-based position of the latest break
    run[1:] = positions - last_break
    return run[:-1]


def _context_codes(codes: np.ndarray, order: int) -> List[np.ndarray]:
    """[code of the j symbols before each position, for j = 0..order], newest symbol least significant (garbage
    where the context is shorter than j: callers mask those with _context_lengths)."""
    clean = np.where(codes >= 0, codes, 0)
    out = [np.zeros(len(codes), dtype=np.int64)]
    for j in range(1, order + 1):
        shifted = np.zeros(len(codes), dtype=np.int64)
        shifted[j:] = clean[:len(codes) - j]
        out.append(out[-1] + shifted * 5 ** (j - 1))
    return out


class ContextCounts:
    """(context, next symbol) counts for every context length up to `max_order`: the Markov models of every order
    up to it (see the module docstring)."""

    def __init__(self, max_order: int):
        if not 0 <= max_order <= 24:
            raise ValueError(f"order {max_order}: expected 0..24 (contexts are coded in 64-bit integers)")
        self.max_order = max_order
        self.composition = None  # p0 over the five symbols
        self.tables: List[tuple] = []  # per context length j: (sorted joint codes, counts, sorted contexts, counts)

    def fit(self, sequences: Iterable[np.ndarray]) -> "ContextCounts":
        """Count (context, next symbol) over code arrays (symbols 0-4, `BREAK` elsewhere)."""
        joints: List[List[np.ndarray]] = [[] for _ in range(self.max_order + 1)]
        for codes in sequences:
            codes = np.asarray(codes, dtype=np.int64)
            lengths, target = _context_lengths(codes), codes >= 0
            for j, context in enumerate(_context_codes(codes, self.max_order)):
                at = target & (lengths >= j)
                joints[j].append(context[at] * 5 + codes[at])
        self.tables = []
        for parts in joints:
            joint, counts = np.unique(np.concatenate(parts) if parts else np.zeros(0, np.int64), return_counts=True)
            contexts, inverse = np.unique(joint // 5, return_inverse=True)
            self.tables.append((joint, counts, contexts, np.bincount(inverse, weights=counts,
                                                                      minlength=len(contexts))))
        symbols = np.bincount(self.tables[0][0] % 5, weights=self.tables[0][1], minlength=5)
        if not symbols.sum():
            raise ValueError("ContextCounts.fit: the training sequences hold no base")
        self.composition = (symbols + 1) / (symbols.sum() + 5)  # Laplace: a symbol never seen keeps some mass
        return self

    @staticmethod
    def _lookup(keys: np.ndarray, counts: np.ndarray, query: np.ndarray) -> np.ndarray:
        if not len(keys):
            return np.zeros(len(query))
        at = np.clip(np.searchsorted(keys, query), 0, len(keys) - 1)
        return np.where(keys[at] == query, counts[at], 0).astype(np.float64)

    def bits(self, codes: np.ndarray, order: int, alpha: float) -> np.ndarray:
        """-log2 p of every symbol of `codes` under the order-`order` model smoothed by `alpha`, given the symbols
        before it in `codes` (NaN at breaks)."""
        if self.composition is None:
            raise RuntimeError("ContextCounts.bits before fit")
        if not 0 <= order <= self.max_order:
            raise ValueError(f"order {order}: these counts go up to order {self.max_order}")
        if alpha <= 0:
            raise ValueError(f"alpha {alpha}: expected > 0")
        codes = np.asarray(codes, dtype=np.int64)
        target = codes >= 0
        used = np.minimum(_context_lengths(codes), order)  # the longest context each position has
        p = np.full(len(codes), np.nan)
        for j, context in enumerate(_context_codes(codes, order)):
            at = target & (used == j)
            joint, counts, contexts, totals = self.tables[j]
            count = self._lookup(joint, counts, context[at] * 5 + codes[at])
            total = self._lookup(contexts, totals, context[at])
            p[at] = (count + alpha * self.composition[codes[at]]) / (total + alpha)
        return -np.log2(p)


MAX_TRAINING_TOKENS = 20_000_000  # the counts hold ~150 bytes per training token at order 12


def pack_training_codes(manifest, max_tokens: int = MAX_TRAINING_TOKENS) -> List[np.ndarray]:
    """The symbol codes of every training dataset of a pack (the .bin token files of its train split), all in
    memory: a pack past max_tokens is refused rather than exhausting the machine."""
    lut = symbol_codes(manifest.vocab, manifest.soft_mask_bit)
    dtype = np.dtype(manifest.raw["dtype"])
    prefixes, _ = manifest.blend_paths("train")
    total = sum(os.path.getsize(f"{prefix}.bin") for prefix in prefixes) // dtype.itemsize
    if total > max_tokens:
        raise ValueError(f"{manifest.directory}: the train split holds {total:,} tokens; the count-based references "
                         f"hold them all in memory and stop at {max_tokens:,} (score a few chromosomes' FASTA with "
                         "benchmarks/genome_references.py instead)")
    return [lut[np.fromfile(f"{prefix}.bin", dtype=dtype)] for prefix in prefixes]


def validation_bits_per_base(datasets: Dict[str, object], num_samples: int, manifest, counts: ContextCounts,
                             orders: Sequence[Tuple[int, float]]) -> Dict[int, float]:
    """{order: bits per base} of each (order, alpha) model over the validation samples the trainer scores (every
    group's first `num_samples`), counted as the trainer counts: every target but EOD where the loss mask is set,
    each sample on its own (a context starts at the sample's first token)."""
    lut = symbol_codes(manifest.vocab, manifest.soft_mask_bit)
    codes, scored = [], []
    for group, dataset in datasets.items():
        for index in range(num_samples):
            item = dataset[index]
            tokens, labels = item["tokens"].numpy(), item["labels"].numpy()
            counted = (item["loss_mask"].numpy() > 0) & (labels != manifest.eod)
            sample = lut[np.concatenate([tokens[:1], labels])]
            if (sample[1:][counted] < 0).any():
                raise ValueError(f"{manifest.directory}: a validation target of group {group!r} is neither a base "
                                 "nor EOD; the references score A, C, G, T and N only")
            codes += [sample, [BREAK]]  # the break keeps each sample's contexts to itself
            scored += [np.concatenate([[False], counted]), [False]]
    codes, scored = np.concatenate(codes), np.concatenate(scored)
    if not scored.any():
        raise ValueError(f"{manifest.directory}: the validation samples hold no base to score")
    return {order: float(counts.bits(codes, order, alpha)[scored].mean()) for order, alpha in orders}


DEFAULT_ORDERS = ((0, 1.0), (3, 1.0), (6, 1.0), (12, 4.0))  # (order, alpha): a high order needs more smoothing


def pack_references(pack: str, num_samples: int, cache_dir: str,
                    orders: Sequence[Tuple[int, float]] = DEFAULT_ORDERS) -> Dict[int, float]:
    """{order: bits per base} on a pack's validation samples (the trainer's: `num_samples` per group) of Markov
    references fitted to its training split."""
    from nucleotron.data_prep.manifest import load_manifest

    from .data import build_valid_datasets

    manifest = load_manifest(pack)
    os.makedirs(cache_dir, exist_ok=True)
    datasets = build_valid_datasets(manifest, num_samples, cache_dir)
    counts = ContextCounts(max(order for order, _ in orders)).fit(pack_training_codes(manifest))
    return validation_bits_per_base(datasets, num_samples, manifest, counts, orders)


def describe(bits: Dict[int, float]) -> str:
    """'order 0 (base composition) 1.9737, order 3 1.9446, ...'"""
    return ", ".join(f"order {k}{' (base composition)' if k == 0 else ''} {v:.4f}" for k, v in sorted(bits.items()))

