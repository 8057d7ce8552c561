"""`nucleotron analyze gengram` on a small model trained with the quickstart's config on the synthetic genome with a
planted motif: the gate opens at the genome's own low-complexity motifs (poly-A/T tracts, microsatellites) more than
in the background, the planted motif's contrast is measured and reported, and the plots and tables are written."""
import csv
import json
import sys

import numpy as np
import pytest
import torch

from nucleotron.data_prep.genome_sim import gff3, plant, simulate_species
from nucleotron.data_prep.synthetic import write_fasta
from nucleotron.infer.analyze import AnalyzeError, feature_contrast, kmer_of, parse_region, read_gff
from nucleotron.kernels.reference import kmer_ids

import warm_python
from train_runs import REPO, training_env

MOTIF = b"TTGACGGCTATA"  # planted on both strands (alternating), about every 200 bases
CLI = [sys.executable, "-m", "nucleotron.launch.cli"]
REGION_END = 20_000  # all of chr2, the held-out chromosome


def _run(*args):
    result = warm_python.run([*CLI, *args], capture_output=True, text=True, timeout=600, env=training_env())
    assert result.returncode == 0, f"{args[:2]}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    rng = np.random.default_rng(5)
    first, second, annotation = simulate_species(7, {"chr1": 60_000, "chr2": REGION_END})
    genomes, motifs = [], []
    for genome in (first, second):
        planted = {}
        for name, seq in genome.items():
            planted[name], starts = plant(seq, MOTIF, 200, rng)
            if genome is first and name == "chr2":
                motifs = starts
        genomes.append(planted)
    write_fasta(str(root / "human.fa"), genomes[0].items())
    write_fasta(str(root / "chimp.fa"), genomes[1].items())
    (root / "sources.tsv").write_text("path\tgroup\tassembly\nhuman.fa\thuman\ths\nchimp.fa\tnonhuman\tpt\n")
    gff = root / "chr2.gff3"  # the genome's own features on chr2, then the planted motifs
    gff.write_text(gff3({"chr2": annotation["chr2"]}) + "".join(
        f"chr2\tplanted\tmotif\t{s + 1}\t{s + len(MOTIF)}\t.\t{'+' if i % 2 == 0 else '-'}\t.\tID=m{i}\n"
        for i, s in enumerate(motifs) if s + len(MOTIF) <= REGION_END))
    _run("data", "prep", "--sources", str(root / "sources.tsv"), "--seq-len", "128", "--out", str(root / "pack"),
         "--valid-chroms", "chr2", "--no-progress")
    run_dir = root / "run"
    _run("train", "--config", str(REPO / "configs" / "experiments" / "quickstart.yaml"), f"data.packs={root / 'pack'}",
         f"run.dir={run_dir}", "run.seed=1", "train.max_steps=100", "train.global_batch_size=8",
         "train.micro_batch_size=8", "train.eval_every=100", "train.eval_steps=1", "checkpoint.every=100",
         "train.log_every=50")
    out = root / "analysis"
    result = _run("analyze", "gengram", str(run_dir), "--fasta", str(root / "human.fa"),
                  "--region", f"chr2:1-{REGION_END}", "--annotation", str(gff), "--out", str(out))
    return {"out": out, "gff": gff, "stdout": result.stdout, "region_end": REGION_END}


def _contrasts(analysed):
    return json.loads((analysed["out"] / "summary.json").read_text())["layers"]["layer3"]["alpha_by_feature"]


def test_gate_opens_at_low_complexity_motifs(analysed):
    """The paper's reading of the gate (open at motifs such as poly-T, shut in background), on the genome's own
    poly-A/T tracts and microsatellites, base for base (an A in a poly-A tract against an A in background). Measured
    with this fixture at run.seed 1, 2, 3 (benchmarks/results/quickstart-cpu.md, stop 24): poly-A/T +0.37, +0.35,
    +0.26 and microsatellites +0.26, +0.21, +0.28 after 100 steps (+0.03 to +0.09 already after 40)."""
    contrasts = _contrasts(analysed)
    for kind in ("low_complexity", "microsatellite"):
        assert contrasts[kind]["positions_inside"] >= 100 and contrasts[kind]["contrast_same_base"] > 0.05, kind


def test_gate_contrast_at_the_planted_motif_is_measured_and_reported(analysed):
    """The gate at the planted 12-mer against background positions holding the same base. Its sign is not asserted
    because none holds at this scale: with this fixture at run.seed 1, 2, 3 the same-base contrast was +0.031,
    +0.026, +0.031 after 40 steps and +0.020, -0.019, +0.027 after 100; with the motif every 40 bases (stop 23) the
    gate closed there after 200 steps (-0.03 to -0.15). What is tested is that analyze measures the contrast and
    reports it (the numbers are checked against the TSV and a hand count below)."""
    motif = _contrasts(analysed)["motif"]
    assert motif["positions_inside"] > 1000 and motif["positions_outside"] > 1000
    assert (f"gate at motif {motif['inside']:.4f} vs background {motif['outside']:.4f} ({motif['contrast']:+.4f}, "
            f"same base {motif['contrast_same_base']:+.4f})") in analysed["stdout"]


def test_tracks_tsv_holds_every_position_and_agrees_with_the_summary(analysed):
    with open(analysed["out"] / "tracks.tsv") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert [int(r["pos"]) for r in rows] == list(range(1, analysed["region_end"] + 1))
    alpha = np.array([float(r["alpha_L3"]) for r in rows])
    assert ((alpha > 0) & (alpha < 1)).all() and all(float(r["ynorm_L3"]) >= 0 for r in rows)
    inside, covered = np.zeros(len(rows), bool), np.zeros(len(rows), bool)
    for line in analysed["gff"].read_text().splitlines()[1:]:
        kind, start, end = line.split("\t")[2], *(int(x) for x in line.split("\t")[3:5])
        covered[start - 1:end] = True
        if kind == "motif":
            inside[start - 1:end] = True
            assert "".join(r["base"] for r in rows[start - 1:end]).upper() in (MOTIF.decode(), _rc(MOTIF))
    motif = _contrasts(analysed)["motif"]
    assert motif["inside"] == pytest.approx(alpha[inside].mean(), abs=1e-5)
    assert motif["outside"] == pytest.approx(alpha[~covered].mean(), abs=1e-5)  # background: outside every feature


def test_plots_and_table_reports_are_written(analysed):
    out = analysed["out"]
    assert (out / "tracks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "kmers.tsv") as handle:
        kmers = list(csv.DictReader(handle, delimiter="\t"))
    assert {int(r["order"]) for r in kmers} == {1, 2, 3, 4, 5, 6}
    for order in range(1, 7):
        rows = [r for r in kmers if int(r["order"]) == order]
        assert len(rows) == min(10, 4 ** order) and all(len(r["kmer"]) == order and "N" not in r["kmer"] for r in rows)
        norms = [float(r["row_norm"]) for r in rows]
        assert norms == sorted(norms, reverse=True)
    with open(out / "rc_symmetry.tsv") as handle:
        rc = list(csv.DictReader(handle, delimiter="\t"))
    assert [int(r["order"]) for r in rc] == [1, 2, 3, 4, 5, 6] and [int(r["kmers"]) for r in rc] == [4 ** n for n in
                                                                                                  range(1, 7)]
    assert all(-1 <= float(r["rc_norm_corr"]) <= 1 for r in rc)


def _rc(seq: bytes) -> str:
    return seq.decode().translate(str.maketrans("ACGT", "TGCA"))[::-1]


def test_kmer_of_names_the_row_the_kernel_reads():
    """The k-mer ending at t is read from the row the reference kernel computes for position t."""
    symbols = "ACGTN"
    codes = torch.tensor([[0, 3, 2, 2, 1, 4, 0, 1, 3]])
    for order in (1, 3, 5):
        ids, valid = kmer_ids(codes, order)
        for t in range(order - 1, codes.shape[1]):
            if valid[0, t]:
                assert kmer_of(int(ids[0, t]), order) == "".join(symbols[c] for c in codes[0, t - order + 1:t + 1])


def test_feature_contrast_against_a_hand_count(tmp_path):
    gff = tmp_path / "a.gff"
    gff.write_text("c\tx\tsite\t3\t4\t.\t+\t.\tID=a\nc\tx\tsite\t9\t9\t.\t-\t.\tID=b\n"
                   "other\tx\tsite\t1\t9\t.\t+\t.\t.\n")
    features = read_gff(gff, "c", 1, 10)
    values = np.arange(10, dtype=float)  # positions 1..10
    bases = b"ACgtACGTAT"  # inside: positions 3 (G), 4 (T), 9 (A)
    result = feature_contrast(values, 1, features, bases)["site"]
    assert result["inside"] == pytest.approx((2 + 3 + 8) / 3)
    assert result["outside"] == pytest.approx((0 + 1 + 4 + 5 + 6 + 7 + 9) / 7)
    # same base: G 2 vs 6, T 3 vs mean(7, 9), A 8 vs mean(0, 4); one inside position each
    assert result["contrast_same_base"] == pytest.approx(((2 - 6) + (3 - 8) + (8 - 2)) / 3)


@pytest.mark.parametrize("text", ["chr1", "chr1:10", "chr1:0-5", "chr1:9-3", ":1-2"])
def test_bad_region_is_named(text):
    with pytest.raises(AnalyzeError, match=r"--region .*expected CHROM:START-END"):
        parse_region(text)
