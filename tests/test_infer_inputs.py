"""Inputs and statistics of the inference commands, without a model: task presets, sequence files, probe metrics."""
import glob
import os

import numpy as np
import pytest
import torch

from nucleotron.infer.probe import fit_binary, folds_of, load_task, mcc, probe, roc_auc
from nucleotron.infer.sequences import InputError, encoder, read_sequences

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = sorted(glob.glob(os.path.join(ROOT, "configs", "tasks", "*.yaml")))


@pytest.mark.parametrize("path", PRESETS, ids=[os.path.basename(p) for p in PRESETS])
def test_task_presets_name_a_public_dataset_and_its_splits(path):
    task = load_task(path)
    assert task["name"] == os.path.basename(path)[:-len(".yaml")]
    assert "/" in task["dataset"] and task["train_split"] != task["test_split"]


def test_auc_and_mcc_equal_their_definitions():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(60), 1)                           # many ties
    positive = rng.random(60) < 0.4
    pairs = [(p > n) + 0.5 * (p == n) for p in scores[positive] for n in scores[~positive]]
    assert roc_auc(scores, positive) == pytest.approx(np.mean(pairs))
    true, predicted = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    tp, tn = np.sum((true == 1) & (predicted == 1)), np.sum((true == 0) & (predicted == 0))
    fp, fn = np.sum((true == 0) & (predicted == 1)), np.sum((true == 1) & (predicted == 0))
    expected = (tp * tn - fp * fn) / np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    assert mcc(true, predicted, 2) == pytest.approx(expected)
    assert mcc(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 2]), 3) == pytest.approx(1.0)


def test_logistic_fit_reaches_the_penalised_optimum():
    """At the optimum the gradient of mean log-loss + l2/2 |w|^2 (bias unpenalised), by autograd, vanishes."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 5, generator=g, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * torch.randn(80, generator=g, dtype=torch.float64) > 0).long()
    w = fit_binary(x, y == 1, l2=0.1).requires_grad_(True)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w[:-1] + w[-1], y.double()) + \
        0.05 * (w[:-1] ** 2).sum()
    loss.backward()
    assert w.grad.abs().max() < 1e-8


def test_probe_on_separable_features_and_stratified_folds():
    rng = np.random.default_rng(1)
    labels = np.array([0, 1] * 40)
    features = rng.normal(size=(80, 4)) + labels[:, None] * 3.0
    result = probe(features[:60], labels[:60].tolist(), features[60:], labels[60:].tolist(), folds=3)
    assert result["metrics"]["auc"] == 1.0 and result["metrics"]["accuracy"] == 1.0
    folds = folds_of(labels, 4, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(80))
    assert all(labels[f].sum() == 10 for f in folds)


def test_sequence_files_and_bad_bases(tmp_path):
    fasta = tmp_path / "x.fa"
    fasta.write_text(">one desc\nACGT\nacgn\n>two\nRYAC\n")
    assert read_sequences(str(fasta)) == (["one", "two"], ["ACGTacgn", "RYAC"])
    encode = encoder({"A": 8, "C": 5, "G": 6, "T": 7, "N": 9})
    assert encode("acgtRy", "x").tolist() == [8, 5, 6, 7, 9, 9]
    with pytest.raises(InputError, match=r"^record r: character 'U' at position 3 is not a DNA base"):
        encode("ACUG", "record r")
    table = tmp_path / "x.csv"
    table.write_text("name,seq\na,ACGT\n")
    with pytest.raises(InputError, match=r"x.csv: no column 'sequence' \(columns: name, seq\)"):
        read_sequences(str(table))
    bad = tmp_path / "bad.fa"
    bad.write_text("ACGT\n>x\nA\n")
    with pytest.raises(InputError, match=r"bad.fa line 1: sequence before the first '>' header"):
        read_sequences(str(bad))
