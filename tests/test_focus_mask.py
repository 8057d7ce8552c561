"""FOCUS layout, visibility rules (R1/R2) against the written rules, fidelity measures and focus.* config checks."""
import math

import pytest
import torch

from nucleotron.configs import ConfigError, load_config
from nucleotron.model.focus.layout import insert_summaries, layout_for_bases, next_base_labels
from nucleotron.model.focus.mask import MaskSpec, dense_mask
from nucleotron.model.focus.metrics import fidelity, median_iqr


def written_sequence(L, k):
    """The augmented sequence spelled out: ('B', base index) and ('S', summary ordinal) after every k-th base."""
    tokens = []
    for i in range(L):
        tokens.append(("B", i))
        if (i + 1) % k == 0:
            tokens.append(("S", i // k))
    return tokens


def written_mask(L, k, W, rule, memory=None):
    """Visibility straight from the reference notes (section 1.4), one (query, key) pair at a time."""
    tokens = written_sequence(L, k)

    def window(tok):
        return tok[1] // W if tok[0] == "B" else ((tok[1] + 1) * k - 1) // W

    def kmer(tok):
        return tok[1] // k if tok[0] == "B" else tok[1]

    n = len(tokens)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for a, q in enumerate(tokens):
        earlier_summaries = [t[1] for t in tokens[:a] if t[0] == "S" and window(t) < window(q)]
        if memory is not None:
            earlier_summaries = earlier_summaries[-memory:]
        for b, key in enumerate(tokens[:a + 1]):
            same_window = window(key) == window(q)
            if rule == "window":  # R2: the whole current window, plus kept summaries of earlier windows
                ok = same_window or (key[0] == "S" and key[1] in earlier_summaries)
            else:  # R1: own k-mer's bases and the window's summaries, plus the boundary summary
                ok = (same_window and (key[0] == "S" or kmer(key) == kmer(q))) or \
                     (key[0] == "S" and bool(earlier_summaries) and key[1] == earlier_summaries[-1])
            mask[a, b] = ok
    return mask, tokens


CASES = [(40, 4, 8, "window", None), (40, 4, 8, "window", 2), (37, 3, 8, "window", None), (37, 3, 8, "window", 1),
         (40, 4, 8, "kmer", None), (37, 3, 8, "kmer", None), (24, 5, 5, "window", None), (24, 4, 16, "kmer", None)]


@pytest.mark.parametrize("L,k,W,rule,memory", CASES)
def test_mask_matches_written_rules(L, k, W, rule, memory):
    expected, tokens = written_mask(L, k, W, rule, memory)
    layout = layout_for_bases(0, L, k)
    assert [("S" if s else "B", int(i) // k if s else int(i)) for i, s in zip(layout.base_index, layout.is_summary)] \
        == tokens
    assert torch.equal(layout.positions(k), torch.arange(len(tokens))), "consecutive positions"
    got = dense_mask(layout, layout, MaskSpec(k=k, window=W, rule=rule, summary_memory=memory))
    assert torch.equal(got, expected)
    assert not torch.triu(got, diagonal=1).any(), "strictly causal"
    assert got.diagonal().all(), "every position sees itself"


def test_rule_examples():
    L, k, W = 32, 4, 8
    layout = layout_for_bases(0, L, k)
    pos = {(bool(s), int(i)): n for n, (i, s) in enumerate(zip(layout.base_index, layout.is_summary))}
    r2 = dense_mask(layout, layout, MaskSpec(k, W, "window"))
    r1 = dense_mask(layout, layout, MaskSpec(k, W, "kmer"))
    for mask in (r1, r2):
        assert not mask[pos[False, 8], pos[False, 7]], "no base-to-base attention across windows"
        assert mask[pos[True, 11], pos[False, 8]] and mask[pos[True, 11], pos[False, 11]], "summary sees its k-mer"
        assert mask[pos[False, 8], pos[True, 7]], "the boundary summary of the previous window is visible"
    assert mask[pos[False, 9], pos[False, 8]]
    assert r2[pos[False, 13], pos[False, 10]] and not r1[pos[False, 13], pos[False, 10]], \
        "R1: a base cannot see the previous k-mer's bases; R2 sees the whole window"
    assert r2[pos[False, 20], pos[True, 3]] and not r1[pos[False, 20], pos[True, 3]], \
        "R2 keeps every earlier summary; R1 only the boundary one"
    r2_last1 = dense_mask(layout, layout, MaskSpec(k, W, "window", summary_memory=1))
    assert r2_last1[pos[False, 20], pos[True, 15]] and not r2_last1[pos[False, 20], pos[True, 11]]


def test_summary_insertion_and_next_base_labels():
    base = torch.arange(10, 21).reshape(1, 11)
    ids, layout = insert_summaries(base, k=4, summary_id=99)
    assert ids.tolist() == [[10, 11, 12, 13, 99, 14, 15, 16, 17, 99, 18, 19, 20]]
    labels, valid = next_base_labels(base, layout)
    assert labels[0, valid].tolist() == [11, 12, 13, 14, 14, 15, 16, 17, 18, 18, 19, 20]
    assert valid.tolist() == [True] * 12 + [False]
    tail_ids, tail = insert_summaries(base[:, 6:], k=4, summary_id=99, start=6)  # a stream piece: global cadence
    assert tail_ids.tolist() == [[16, 17, 99, 18, 19, 20]]
    assert torch.equal(tail.positions(4), torch.arange(7, 13))


def test_fidelity_measures_by_hand():
    p = torch.tensor([0.5, 0.5, 0.0])
    q = torch.tensor([0.25, 0.75, 0.0])
    got = fidelity(p, q)
    kl = lambda a, b: sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)  # noqa: E731
    m = [0.375, 0.625]
    assert got["l1"].item() == pytest.approx(0.5, abs=1e-9)
    assert got["l2"].item() == pytest.approx(math.sqrt(0.125), abs=1e-9)
    hell = math.sqrt((math.sqrt(0.5) - 0.5) ** 2 + (math.sqrt(0.5) - math.sqrt(0.75)) ** 2) / math.sqrt(2)
    assert got["hellinger"].item() == pytest.approx(hell, abs=1e-9)
    assert got["js"].item() == pytest.approx((kl([0.5, 0.5], m) + kl([0.25, 0.75], m)) / 2, abs=1e-9)
    assert got["kl"].item() == pytest.approx(kl([0.5, 0.5], [0.25, 0.75]), abs=1e-9)
    disjoint = fidelity(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert disjoint["kl"].item() == pytest.approx(math.log(1e12), rel=1e-6), "1e-12 clipping keeps KL finite"
    assert median_iqr(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])) == {"median": 3.0, "iqr": 2.0}


@pytest.mark.parametrize("override,message", [
    ("focus.raw_visibility=r3", "focus.raw_visibility='r3' is not one of: window, kmer"),
    ("focus.summary_memory=0", "focus.summary_memory=0 must be >= 1 (or null to keep every summary)"),
    ("focus.adapter_params=[q,x]", "focus.adapter_params=['q', 'x'] must be a non-empty subset of q, k, v, o"),
    ("focus.summary_token_id=-1", "focus.summary_token_id=-1 must be a vocabulary id >= 0"),
    ("focus.adapter_layers=[5]", "focus.adapter_layers=[5] must be distinct 1-based layers in 1..4 ([] = all)"),
    ("focus.k=0", "focus.k=0 must be a positive integer"),
])
def test_bad_focus_settings_name_the_key(override, message):
    with pytest.raises(ConfigError, match="configs/models/tiny.yaml: invalid configuration") as err:
        load_config("configs/models/tiny.yaml", [override])
    assert message in str(err.value)


def test_focus_settings_merge_over_a_checkpoint_config(tmp_path):
    from nucleotron.configs.schema import FocusConfig
    from nucleotron.infer.focus_io import focus_config

    cfg = load_config("configs/models/tiny.yaml")
    trained = FocusConfig(k=8, window=64, adapter_params=["q", "o"])
    merged = focus_config(cfg, trained, ["focus.summary_memory=4"], "adapter.safetensors")
    assert (merged.focus.k, merged.focus.window, merged.focus.summary_memory) == (8, 64, 4)
    assert merged.focus.adapter_params == ["q", "o"] and merged.model == cfg.model
    paper = focus_config(cfg, None, [], "ckpt", "configs/focus/paper.yaml")
    assert (paper.focus.k, paper.focus.window, paper.focus.raw_visibility) == (100, 1024, "window")
    with pytest.raises(ConfigError, match=r"'model.hidden_size=8': only focus.KEY=VALUE overrides are accepted"):
        focus_config(cfg, None, ["model.hidden_size=8"], "ckpt")
    with pytest.raises(ConfigError, match="adapter.safetensors: invalid configuration"):
        focus_config(cfg, None, ["focus.raw_visibility=r3"], "adapter.safetensors")
    bad = tmp_path / "bad.yaml"
    bad.write_text("focus:\n  k: 4\nmodel:\n  hidden_size: 8\n")
    with pytest.raises(ConfigError, match="a FOCUS config holds one top-level key, 'focus'"):
        focus_config(cfg, None, [], "ckpt", str(bad))


def test_eval_segments_cut_records_into_equal_pieces():
    import numpy as np

    from nucleotron.infer.focus_eval import segments

    records = [np.array([12] + list(range(100, 125))), np.array([12, 1, 2, 3])]
    pieces = segments(records, 10, 5, eod=12)
    assert [p.tolist() for p in pieces] == [[12] + list(range(100, 110)), [12] + list(range(110, 120)),
                                            [12, 1, 2, 3]]
    assert len(segments(records, 10, 1, eod=12)) == 1
