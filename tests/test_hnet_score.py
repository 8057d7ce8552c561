"""dnaHNet end to end on dnaHNet's own kind of data: a one-group (prokaryote) pack trains a tiny H-Net for two steps
through `nucleotron train` (DeepSpeed), and `nucleotron score` reads its checkpoint: the parallel forward and the
recurrent step path give the same log-likelihoods as a direct forward of the saved weights, the boundary file has one
row per base for stage 1 and one per stage-1 selection for stage 2, and options of one model family used on the other
are refused by name."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from nucleotron.data_prep.prep import PrepOptions, run_prep
from nucleotron.data_prep.synthetic import make_genome, write_fasta
import warm_python
from train_runs import REPO, metrics, training_env

SEQ_LEN = 64
LENGTHS = {"short": 20, "one_window": 63, "three_windows": 150}
TOL = 1e-5


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hnet_score")
    for seed, name in enumerate(("ecoli", "bsub")):
        write_fasta(str(root / f"{name}.fa"), make_genome(seed, {"chr1": 8_000, "chr20": 3_000},
                                                          gap_len=(100, 200)).items())
    (root / "sources.tsv").write_text("path\tgroup\tassembly\necoli.fa\tprokaryote\tecoli\n"
                                      "bsub.fa\tprokaryote\tbsub\n")
    run_prep(PrepOptions(sources=str(root / "sources.tsv"), seq_len=SEQ_LEN, out=str(root / "pack"), min_len=32,
                         valid_chroms=["chr20"], workers=1, progress=False, group_weights={"prokaryote": 1}))
    run = root / "run"
    command = [sys.executable, "-m", "nucleotron.launch.cli", "train", "--config",
               str(REPO / "configs" / "models" / "dnahnet-tiny.yaml"), f"data.packs={root / 'pack'}",
               f"run.dir={run}", "train.max_steps=2", "checkpoint.every=2", "train.eval_every=2",
               "train.eval_steps=1", "train.log_every=1"]
    result = warm_python.run(command, capture_output=True, text=True, timeout=600, env=training_env())
    assert result.returncode == 0, result.stderr[-4000:]
    rng = np.random.default_rng(7)
    with open(root / "seqs.fa", "w") as handle:
        for name, n in LENGTHS.items():
            handle.write(f">{name}\n{''.join(rng.choice(list('ACGTacgtN'), n))}\n")
    return run


def test_a_one_group_pack_trains_and_validates_its_group(run_dir):
    valid = [r for r in metrics(run_dir) if r["kind"] == "valid"]
    assert valid and set(k.split("/")[0] for k in valid[-1] if "/" in k) == {"prokaryote"}
    assert valid[-1]["loss"] == valid[-1]["prokaryote/loss"]


def score(run_dir, tmp_path, mode, *extra):
    from nucleotron.infer.score import main

    out = tmp_path / f"{mode}.tsv"
    assert main([str(run_dir), "--device", "cpu", "--sequences", str(run_dir.parent / "seqs.fa"), "--out", str(out),
                 "--mode", mode, "--batch-size", "3", *extra]) == 0
    import pandas as pd

    return pd.read_csv(out, sep="\t").set_index("id")


def direct_log_likelihoods(run_dir):
    """Each sequence scored by hand: the saved weights loaded into HNetLM, EOD + <= 63 bases per window, one forward
    each, log-softmax summed (the independent reference)."""
    from nucleotron.infer.checkpoint import read_checkpoint
    from nucleotron.infer.sequences import encoder, read_fasta
    from nucleotron.model.hnet import HNetLM

    ckpt = read_checkpoint(str(run_dir))
    state = torch.load(f"{ckpt.directory}/deepspeed/mp_rank_00_model_states.pt", map_location="cpu",
                       weights_only=False)["module"]
    cfg = ckpt.cfg.model
    model = HNetLM(cfg.hnet, cfg.vocab_size, cfg.norm_eps)
    model.load_state_dict(state)
    model.eval()
    encode = encoder(ckpt.vocab)
    totals = {}
    with torch.no_grad():
        for name, sequence in read_fasta(str(run_dir.parent / "seqs.fa")):
            ids = encode(sequence, name)
            total = 0.0
            for start in range(0, len(ids), SEQ_LEN - 1):
                tokens = torch.tensor([ckpt.vocab["EOD"], *ids[start:start + SEQ_LEN - 1]])[None]
                logp = torch.log_softmax(model(tokens).logits[0, :-1], -1).gather(-1, tokens[0, 1:, None])
                total += logp.double().sum().item()
            totals[name] = total
    return totals


def test_parallel_and_step_scores_equal_a_direct_forward(run_dir, tmp_path):
    parallel = score(run_dir, tmp_path, "parallel", "--boundaries", str(tmp_path / "bp.tsv"))
    step = score(run_dir, tmp_path, "step", "--boundaries", str(tmp_path / "bs.tsv"))
    direct = direct_log_likelihoods(run_dir)
    for name, n in LENGTHS.items():
        assert parallel.loc[name, "bases"] == n
        assert abs(parallel.loc[name, "log_likelihood"] - direct[name]) < TOL
        assert abs(step.loc[name, "log_likelihood"] - direct[name]) < TOL
        assert parallel.loc[name, "bits_per_base"] == pytest.approx(-direct[name] / n / np.log(2), abs=1e-6)

    import pandas as pd

    bp, bs = pd.read_csv(tmp_path / "bp.tsv", sep="\t"), pd.read_csv(tmp_path / "bs.tsv", sep="\t")
    assert list(bp.columns) == ["id", "position", "stage", "p", "selected"]
    assert set(bp.stage) == {1, 2} and bp.p.between(0, 1).all() and set(bp.selected) <= {0, 1}
    for name, n in LENGTHS.items():
        one, two = bp[(bp.id == name) & (bp.stage == 1)], bp[(bp.id == name) & (bp.stage == 2)]
        assert list(one.position) == list(range(1, n + 1))                     # every base once
        assert list(two.position) == list(one.position[one.selected == 1])     # what stage 1 selected
        assert (one.selected == (one.p > 0.5)).all()
    # the step path routes the same positions with the same probabilities
    assert (bp[["id", "position", "stage", "selected"]].values == bs[["id", "position", "stage", "selected"]].values).all()
    assert np.abs(bp.p.values - bs.p.values).max() < TOL


def test_variant_scores_agree_between_modes(run_dir, tmp_path):
    from nucleotron.infer.loading import load_model
    from nucleotron.infer.score import score_variants

    rng = np.random.default_rng(3)
    (tmp_path / "ref.fa").write_text(">chr1\n" + "".join(rng.choice(list("ACGT"), 200)) + "\n")
    ref = (tmp_path / "ref.fa").read_text().split("\n")[1]
    alt = {"A": "C", "C": "G", "G": "T", "T": "A"}
    (tmp_path / "v.vcf").write_text("##fileformat=VCFv4.2\n" + "".join(
        f"chr1\t{pos}\t.\t{ref[pos - 1]}\t{alt[ref[pos - 1]]}\n" for pos in (40, 120)))
    lm = load_model(str(run_dir), "cpu", allow_hnet=True)
    rows = {mode: score_variants(lm, str(tmp_path / "v.vcf"), str(tmp_path / "ref.fa"), 31, 4, "stop", mode)[0]
            for mode in ("parallel", "step")}
    assert len(rows["parallel"]) == 2
    for a, b in zip(rows["parallel"], rows["step"]):
        assert a["pos"] == b["pos"] and abs(a["score"] - b["score"]) < TOL and a["score"] != 0


def tiny_gpt_folder(path):
    """A random-weight GPT-family model in the exported Hugging Face layout (no training needed)."""
    from nucleotron.data_prep.tokens import VOCAB
    from nucleotron.infer.modeling_nucleotron import NucleotronForCausalLM, NucleotronLMConfig

    config = NucleotronLMConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                max_position_embeddings=SEQ_LEN)
    NucleotronForCausalLM(config).save_pretrained(str(path))
    vocab = {("<EOD>" if k == "EOD" else "<PAD>" if k == "PAD" else k): v for k, v in VOCAB.items()}
    (path / "vocab.json").write_text(json.dumps(vocab))
    return path


@pytest.mark.parametrize("options, message", [
    (["--mode", "step"], "--mode step: the step path exists for H-Net models only"),
    (["--boundaries", "b.tsv"], "--boundaries: {model} is a GPT-family model, which has no routing stages"),
])
def test_hnet_options_on_a_gpt_model_are_refused(run_dir, tmp_path, capsys, options, message):
    from nucleotron.infer.score import main

    gpt = tiny_gpt_folder(tmp_path / "gpt")
    assert main([str(gpt), "--device", "cpu", "--sequences", str(run_dir.parent / "seqs.fa"),
                 "--out", str(tmp_path / "o.tsv"), *options]) == 2
    assert message.format(model=gpt) in capsys.readouterr().err
    assert not (tmp_path / "o.tsv").exists()


def test_gpt_only_commands_refuse_an_hnet_checkpoint(run_dir, tmp_path, capsys):
    from nucleotron.infer.embed import main as embed

    assert embed([str(run_dir), "--device", "cpu", "--sequences", str(run_dir.parent / "seqs.fa"),
                  "--out", str(tmp_path / "e.npy")]) == 2
    err = capsys.readouterr().err
    assert "holds an H-Net model (model.arch=hnet, DeepSpeed checkpoint); this command reads GPT-family models " \
           "only. `nucleotron score` scores H-Net models" in err
