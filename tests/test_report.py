"""`nucleotron report`: final validation loss per run dir, matched to the paper's number by what the run trained."""
import json

import pytest

from nucleotron.configs import load_config, to_yaml
from nucleotron.launch.paper_numbers import REFERENCES, references_for
from nucleotron.launch.report import _loss_zoom, main

EXPERIMENTS = "configs/experiments/ablations-50b"


def make_run(root, name, config, overrides=(), valid_losses=(0.95,), torn_tail=False,
             group_offsets=(("human", -0.001), ("nonhuman", 0.001))):
    run_dir = root / name
    run_dir.mkdir()
    cfg = load_config(f"{EXPERIMENTS}/{config}", [f"run.name={name}", *overrides])
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    lines = []
    for i, loss in enumerate(valid_losses, start=1):
        lines.append(json.dumps({"kind": "train", "step": 100 * i, "loss": loss + 0.02, "lr": 1e-4}))
        groups = {f"{group}/loss": loss + offset for group, offset in group_offsets}
        lines.append(json.dumps({"kind": "valid", "step": 100 * i, "loss": loss, "bits_per_base": loss * 1.4427,
                                 **groups}))
    text = "\n".join(lines) + "\n"
    if torn_tail:
        text += '{"kind": "train", "step": 9'  # a job killed mid-write
    (run_dir / "metrics.jsonl").write_text(text)
    return run_dir


def test_reference_table_has_every_number_in_the_spec():
    assert len(REFERENCES) == 12 + 6 + 5
    assert {ref.study for ref in REFERENCES} == {"cross-arch", "layer-sweep", "window-sweep"}


def test_table_matches_runs_to_the_paper(tmp_path, capsys):
    runs = [
        make_run(tmp_path, "moe-gqa-gengram", "moe-1.2b-gqa.yaml", valid_losses=(1.1, 0.9500), torn_tail=True),
        make_run(tmp_path, "dense-mla-baseline", "dense-0.3b-mla.yaml", ["model.gengram.layers=[]"]),
        make_run(tmp_path, "layer-L10", "moe-1.2b-gqa.yaml",
                 ["model.gengram.layers=[10]", "model.gengram.window=null"]),
        make_run(tmp_path, "balance", "moe-balance-64e.yaml"),
    ]
    assert main([str(r) for r in runs] + ["--json"]) == 0
    rows = {row["run"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["moe-gqa-gengram"]["loss"] == 0.95 and rows["moe-gqa-gengram"]["step"] == 200
    assert rows["moe-gqa-gengram"]["paper"] == 0.9447
    assert rows["moe-gqa-gengram"]["delta"] == pytest.approx(0.95 - 0.9447)
    assert rows["dense-mla-baseline"]["paper"] == 0.9656
    assert rows["layer-L10"]["paper"] == 0.9349 and rows["layer-L10"]["paper_study"] == "layer-sweep"
    assert rows["balance"]["paper"] is None  # the balance study compares load balance, not loss
    assert main([str(r) for r in runs]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["run", "step", "valid", "loss"]
    assert any(line.startswith("moe-gqa-gengram") and "0.9447" in line and "+0.0053" in line for line in table)


def test_group_columns_are_the_groups_the_runs_validated(tmp_path, capsys):
    """A one-group (prokaryote) and a three-group pack: the table's group columns are what the runs logged."""
    one = make_run(tmp_path, "gtdb", "moe-1.2b-gqa.yaml", group_offsets=(("prokaryote", 0.0),))
    three = make_run(tmp_path, "mix", "moe-1.2b-gqa.yaml", valid_losses=(0.9,),
                     group_offsets=(("a", -0.01), ("b", 0.0), ("c", 0.02)))
    assert main([str(one), str(three), "--json"]) == 0
    rows = {row["run"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["gtdb"]["group_losses"] == {"prokaryote": 0.95}
    assert rows["mix"]["group_losses"] == pytest.approx({"a": 0.89, "b": 0.9, "c": 0.92})
    assert main([str(one), str(three)]) == 0
    header, gtdb, mix = capsys.readouterr().out.splitlines()
    assert header.split()[5:9] == ["prokaryote", "a", "b", "c"] and "human" not in header
    assert gtdb.split()[4:8] == ["0.9500", "-", "-", "-"] and mix.split()[4:8] == ["-", "0.8900", "0.9000", "0.9200"]


def test_same_setting_in_two_studies_is_decided_by_the_tags():
    cfg = load_config(f"{EXPERIMENTS}/moe-1.2b-gqa.yaml", ["model.gengram.layers=[]"])
    both = references_for(cfg.model, [])
    assert sorted(ref.loss for ref in both) == [0.949, 0.9565]
    assert [ref.loss for ref in references_for(cfg.model, ["layer-sweep"])] == [0.949]
    assert [ref.loss for ref in references_for(cfg.model, ["cross-arch"])] == [0.9565]


def test_runs_without_results_are_listed_with_a_note(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 0
    assert "no config.yaml; no metrics.jsonl" in capsys.readouterr().out
    assert main([str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    run = make_run(tmp_path, "moe-gqa-gengram", "moe-1.2b-gqa.yaml")
    assert main([str(run), "--plot", str(tmp_path / "report.png")]) == 0
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rulers_are_drawn_in_view_with_their_labels(tmp_path, monkeypatch):
    """The quickstart's count-based references: a dotted line each, labelled with its value, inside the zoom."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from nucleotron.launch.report import plot_curves

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    run = make_run(tmp_path, "r", "moe-1.2b-gqa.yaml", valid_losses=(1.40, 1.35, 1.33))
    plot_curves({"arm": [run]}, tmp_path / "c.png", rulers={"order-0 Markov": 1.97, "order-12 Markov": 1.5})
    ax = figures[0].axes[0]
    low, high = ax.get_ylim()
    assert low < 1.5 and 2.0 < high
    dotted = sorted(line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == ":")
    assert dotted == [1.5, 1.97]
    assert {"order-0 Markov 1.970 ", "order-12 Markov 1.500 "} <= {t.get_text() for t in ax.texts}
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_loss_axis_zooms_past_the_initial_drop():
    """The first tenth of the steps (the drop from ln(vocab)) is left out of the loss axis; the 2-bit line stays."""
    points = [(10, 7.0), (100, 2.1), (500, 1.95), (1000, 1.90)]
    low, high = _loss_zoom(points)
    assert low < 1.90 < 2.1 < high < 2.2
    low, high = _loss_zoom([(100, 1.5), (1000, 1.2)])  # every point below 2 bits: the line is still in view
    assert low < 1.2 and 2.0 < high < 2.1
    assert _loss_zoom([]) is None


def test_plot_without_matplotlib_says_what_to_install(tmp_path, capsys, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    run = make_run(tmp_path, "r", "moe-1.2b-gqa.yaml")
    assert main([str(run), "--plot", str(tmp_path / "x.png")]) == 2
    assert "pip install matplotlib" in capsys.readouterr().err
