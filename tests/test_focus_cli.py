"""`nucleotron focus eval` and `focus score` end to end on a saved tiny checkpoint and adapter file."""
import json
import math

import pytest
import torch

from nucleotron.configs import load_config
from nucleotron.infer.focus_cli import main

VOCAB = {"PAD": 0, "C": 5, "G": 6, "T": 7, "A": 8, "N": 9, "EOD": 12}
OVERRIDES = ["model.num_layers=2", "model.gengram.layers=[]", "model.attention_backend=sdpa", "focus.k=8",
             "focus.window=32"]


pytestmark = pytest.mark.usefixtures("restore_process_state")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(checkpoint dir, adapter file, FASTA): random weights, adapter moved off its base copy."""
    from nucleotron.infer.checkpoint import build_model, save_weights, single_process_megatron
    from nucleotron.infer.focus_io import save_adapter
    from nucleotron.model.focus import FocusModel

    root = tmp_path_factory.mktemp("focus-cli")
    cfg = load_config("configs/models/tiny.yaml", OVERRIDES)
    with single_process_megatron(cfg):
        torch.manual_seed(0)
        base = build_model(cfg, VOCAB)
        save_weights(base, cfg, VOCAB, str(root / "ckpt"))
        model = FocusModel(base, cfg.focus)
        with torch.no_grad():
            for p in model.trainable_parameters():
                p.add_(0.05 * torch.randn_like(p))
        save_adapter(model, str(root / "focus.safetensors"))
    rng = torch.Generator().manual_seed(1)
    records = ["".join("ACGT"[i] for i in torch.randint(0, 4, (n,), generator=rng)) for n in (70, 45)]
    (root / "seqs.fa").write_text("".join(f">s{i} demo\n{s[:30]}\n{s[30:].lower()}\n" for i, s in enumerate(records)))
    return root


def test_focus_eval_writes_fidelity_and_memory(saved, capsys):
    out = saved / "eval"
    assert main(["eval", str(saved / "ckpt"), "--adapter", str(saved / "focus.safetensors"), "--sequences",
                 str(saved / "seqs.fa"), "--lengths", "48", "--out", str(out), "focus.summary_memory=2"]) == 0
    report = json.loads((out / "focus_eval.json").read_text())
    assert report["focus"]["k"] == 8 and report["focus"]["summary_memory"] == 2
    assert report["fidelity"]["positions"] == 71 + 46  # EOD + bases of each record
    assert set(report["fidelity"]["overall"]) == {"l1", "l2", "hellinger", "js", "kl"}
    assert len(report["fidelity"]["per_position"]["kl"]["median"]) == 46
    rows = {(r["model"], r["length"]): r for r in report["memory"]}
    assert rows["uncompressed", 48]["kv_entries_per_layer"] == 48 + 16  # every base kept, decoded ones too
    assert rows["focus", 48]["kv_entries_per_layer"] == 2  # 64 bases end a window: the last 2 summaries stay
    assert "fidelity (median / IQR): l1" in capsys.readouterr().out


def test_focus_score_and_bad_input(saved, capsys):
    out = saved / "scores.tsv"
    assert main(["score", str(saved / "ckpt"), "--adapter", str(saved / "focus.safetensors"), "--sequences",
                 str(saved / "seqs.fa"), "--out", str(out)]) == 0
    header, *lines = out.read_text().splitlines()
    assert header == "id\tbases\tlog_likelihood\tbits_per_base"
    rows = [line.split("\t") for line in lines]
    assert [(r[0], int(r[1])) for r in rows] == [("s0", 70), ("s1", 45)]
    for _, bases, ll, bpb in rows:
        assert float(ll) < 0 and float(bpb) == pytest.approx(-float(ll) / int(bases) / math.log(2), rel=1e-6)
    (saved / "bad.fa").write_text(">x\nACGTXACGT\n")
    assert main(["score", str(saved / "ckpt"), "--adapter", str(saved / "focus.safetensors"), "--sequences",
                 str(saved / "bad.fa"), "--out", str(saved / "bad.tsv")]) == 2
    assert "bad.fa record 'x': character 'X' at position 5 is not a DNA base" in capsys.readouterr().err


def test_focus_help_and_unknown_subcommand(capsys):
    assert main(["--help"]) == 0
    assert "  score" in capsys.readouterr().out
    assert main(["fit"]) == 2
    assert "nucleotron focus: unknown subcommand 'fit'" in capsys.readouterr().err
