"""The count-based Markov references the quickstart prints beside its results: entropies of sources with known
statistics, contexts that stop at breaks, and scoring exactly the targets the trainer's validation counts."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nucleotron.train.count_reference import (BREAK, ContextCounts, pack_training_codes, symbol_codes,
                                              validation_bits_per_base)


def _entropy(p):
    p = np.asarray(p, dtype=float)
    return float(-(p[p > 0] * np.log2(p[p > 0])).sum())


def _markov_chain(rng, transition, n):
    out = np.zeros(n, dtype=np.int64)
    draws = rng.random(n)
    cumulative = np.cumsum(transition, axis=1)
    for t in range(1, n):
        out[t] = np.searchsorted(cumulative[out[t - 1]], draws[t])
    return out


def test_orders_recover_the_entropy_of_an_order_one_source():
    """On a first-order chain over ACGT: order 0 scores the stationary entropy, orders 1 and 3 the conditional
    entropy (more context adds nothing), all on held-out sequence."""
    rng = np.random.default_rng(0)
    transition = np.array([[.7, .1, .1, .1], [.1, .1, .7, .1], [.25, .25, .25, .25], [.1, .1, .1, .7]])
    train, test = _markov_chain(rng, transition, 200_000), _markov_chain(rng, transition, 50_000)
    values, vectors = np.linalg.eig(transition.T)
    stationary = np.real(vectors[:, np.argmax(np.real(values))])
    stationary /= stationary.sum()
    conditional = sum(stationary[i] * _entropy(transition[i]) for i in range(4))
    counts = ContextCounts(3).fit([train])
    assert np.nanmean(counts.bits(test, 0, 1.0)) == pytest.approx(_entropy(stationary), abs=0.01)
    assert np.nanmean(counts.bits(test, 1, 1.0)) == pytest.approx(conditional, abs=0.01)
    assert np.nanmean(counts.bits(test, 3, 1.0)) == pytest.approx(conditional, abs=0.02)
    assert conditional < _entropy(stationary) - 0.2  # the test source has something for order 1 to find


def test_a_repeat_seen_in_training_is_memorised_only_by_a_long_enough_order():
    rng = np.random.default_rng(1)
    repeat = rng.integers(0, 4, 300)
    train = [np.concatenate([rng.integers(0, 4, 500), repeat]) for _ in range(20)]
    counts = ContextCounts(12).fit(train)
    held_out = repeat.copy()
    assert np.nanmean(counts.bits(held_out, 0, 1.0)) > 1.9
    assert np.nanmean(counts.bits(held_out, 12, 4.0)) < 0.5


def test_contexts_stop_at_breaks_by_hand():
    """Fitted on A C | G (| a break): composition (counts + 1) / (3 + 5) = A, C, G 2/8, T, N 1/8; the only
    order-1 pair is A->C (C->G spans the break). Scoring C G T with order 1, alpha 1: C has no context (order 0),
    G and T follow contexts never followed by anything in training (composition)."""
    counts = ContextCounts(1).fit([np.array([0, 1, BREAK, 2])])
    p0 = np.array([2, 2, 2, 1, 1]) / 8
    assert counts.composition == pytest.approx(p0)
    first = (1 + p0[1]) / (3 + 1)  # order 0 at the start: count(C) = 1 of 3 symbols
    bits = counts.bits(np.array([1, 2, 3]), 1, 1.0)
    assert bits == pytest.approx(-np.log2([first, p0[2], p0[3]]))
    # A then C: C follows A once, so p(C | A) = (1 + p0(C)) / (1 + 1); after a break the context restarts
    assert counts.bits(np.array([0, 1, BREAK, 1]), 1, 1.0)[[1, 3]] == pytest.approx(
        -np.log2([(1 + p0[1]) / 2, first]))
    assert math.isnan(counts.bits(np.array([0, BREAK]), 1, 1.0)[1])


def test_bad_orders_and_smoothing_are_refused():
    with pytest.raises(ValueError, match="order 25: expected 0..24"):
        ContextCounts(25)
    counts = ContextCounts(2).fit([np.array([0, 1, 2, 3])])
    with pytest.raises(ValueError, match="order 3: these counts go up to order 2"):
        counts.bits(np.array([0, 1]), 3, 1.0)
    with pytest.raises(ValueError, match="alpha 0: expected > 0"):
        counts.bits(np.array([0, 1]), 1, 0)
    with pytest.raises(ValueError, match="no token for N"):
        symbol_codes({"A": 1, "C": 2, "G": 3, "T": 4})


def test_validation_scores_the_trainers_targets_one_sample_at_a_time():
    """Targets the trainer counts (loss mask set, not EOD) are scored, a sample's first token is context only, and
    no context runs from one sample into the next; soft-masked ids read as their bases."""
    vocab = {"A": 8, "C": 5, "G": 6, "T": 7, "N": 9, "EOD": 12}
    bit = 64
    manifest = SimpleNamespace(vocab=vocab, soft_mask_bit=bit, eod=12, directory="pack")
    rng = np.random.default_rng(2)
    lut = symbol_codes(vocab, bit)
    counts = ContextCounts(3).fit([rng.integers(0, 5, 5000)])
    ids = np.array([8, 5, 6, 7, 9])

    def sample(codes, mask):
        tokens = ids[codes]
        tokens[1] |= bit  # a soft-masked base
        full = np.concatenate([tokens, [12]])  # the last target is EOD
        return {"tokens": torch.tensor(full[:-1]), "labels": torch.tensor(full[1:]),
                "loss_mask": torch.tensor(mask, dtype=torch.float32)}

    first, second = rng.integers(0, 5, 9), rng.integers(0, 5, 9)
    mask = np.ones(9)
    mask[4] = 0  # a target the trainer does not count
    datasets = {"human": [sample(first, mask)], "nonhuman": [sample(second, np.ones(9))]}
    got = validation_bits_per_base(datasets, 1, manifest, counts, [(0, 1.0), (3, 1.0)])
    for order in (0, 3):
        kept = [counts.bits(first, order, 1.0)[1:][mask[:8] > 0], counts.bits(second, order, 1.0)[1:]]
        assert got[order] == pytest.approx(np.concatenate(kept).mean())
    assert lut[ids[1] | bit] == lut[ids[1]] == 1
    datasets["human"][0]["labels"][2] = 0  # PAD as a counted target: the references cannot score it
    with pytest.raises(ValueError, match="group 'human' is neither a base nor EOD"):
        validation_bits_per_base(datasets, 1, manifest, counts, [(0, 1.0)])


def test_a_pack_too_big_to_count_in_memory_is_refused(tmp_path):
    vocab = {"A": 8, "C": 5, "G": 6, "T": 7, "N": 9, "EOD": 12}
    np.array([8, 5, 6, 12, 7, 9], dtype=np.uint8).tofile(tmp_path / "human_train.bin")
    manifest = SimpleNamespace(vocab=vocab, soft_mask_bit=None, eod=12, directory=str(tmp_path),
                               raw={"dtype": "uint8"},
                               blend_paths=lambda split: ([str(tmp_path / "human_train")], [1.0]))
    assert [list(c) for c in pack_training_codes(manifest)] == [[0, 1, 2, BREAK, 3, 4]]
    with pytest.raises(ValueError, match=r"the train split holds 6 tokens; .* stop at 5 \(score a few"):
        pack_training_codes(manifest, max_tokens=5)
