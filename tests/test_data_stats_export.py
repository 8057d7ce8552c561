"""`data stats` recomputes composition from the .bin files; `data export-hf` round-trips through datasets."""
import json
import os

import numpy as np
import pytest

from nucleotron.data_prep import tokens as tk
from nucleotron.data_prep.cli import main as data_main
from nucleotron.data_prep.prep import PrepOptions, run_prep
from nucleotron.data_prep.synthetic import make_genome, write_fasta


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    root = tmp_path_factory.mktemp("stats")
    human = make_genome(11, {"chr1": 50_000, "chr20": 20_000}, iupac=5)
    ape = make_genome(12, {"chr1": 30_000, "chr20": 15_000})
    write_fasta(str(root / "h.fa"), human.items())
    write_fasta(str(root / "a.fa"), ape.items())
    (root / "s.tsv").write_text("path\tgroup\tassembly\nh.fa\thuman\th\na.fa\tnonhuman\ta\n")
    run_prep(PrepOptions(sources=str(root / "s.tsv"), seq_len=2048, out=str(root / "pack"), min_len=500,
                         rc_probability=0.5, valid_chroms=["20"], workers=2, progress=False))
    return root / "pack"


def test_stats_match_a_direct_count(pack, capsys):
    assert data_main(["stats", str(pack), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    data = np.fromfile(pack / "human_train.bin", dtype=np.uint8)
    d = result["datasets"]["human_train"]
    assert d["tokens"] == len(data) and d["documents"] == int(np.sum(data == tk.EOD))
    counts = {t: int(np.sum(data == t)) for t in (tk.A, tk.C, tk.G, tk.T, tk.N)}
    assert d["n_fraction"] == pytest.approx(counts[tk.N] / sum(counts.values()))
    assert d["gc_content"] == pytest.approx((counts[tk.C] + counts[tk.G]) / (sum(counts.values()) - counts[tk.N]))
    docs = np.load(pack / "human_train.docs.npy")
    assert d["reverse_complement_fragments"] == int(docs["reverse"].sum()) > 0
    assert d["full_length_fragments"] + d["short_fragments"] == len(docs)
    human = os.path.getsize(pack / "human_valid.bin")
    nonhuman = os.path.getsize(pack / "nonhuman_valid.bin")
    assert result["mix"]["valid"]["on_disk_human_share"] == pytest.approx(human / (human + nonhuman))
    assert result["mix"]["valid"]["blend_human_share"] == 0.5
    assert data_main(["stats", str(pack)]) == 0
    assert "mix train" in capsys.readouterr().out


def test_stats_detects_a_bin_that_disagrees_with_the_manifest(pack, tmp_path, capsys):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(pack, copy)
    with open(copy / "nonhuman_train.bin", "r+b") as handle:
        handle.seek(10)
        handle.write(bytes([tk.EOD]))
    assert data_main(["stats", str(copy)]) == 1
    assert "nonhuman_train.bin disagrees with the manifest" in capsys.readouterr().err


def test_export_hf_round_trip(pack, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    import datasets
    out = tmp_path / "hf"
    assert data_main(["export-hf", str(pack), str(out)]) == 0
    loaded = datasets.load_dataset("parquet", data_files={s: str(out / "data" / f"{s}-00000-of-00001.parquet")
                                                         for s in ("train", "valid")})
    for split in ("train", "valid"):
        expected = []
        for group in ("human", "nonhuman"):
            data = np.fromfile(pack / f"{group}_{split}.bin", dtype=np.uint8)
            cuts = np.flatnonzero(data == tk.EOD)
            expected += [tk.decode(doc[doc != tk.EOD]) for doc in np.split(data, cuts + 1)[:-1]]
        rows = loaded[split]
        assert rows["sequence"] == expected
        assert [len(s) for s in rows["sequence"]] == rows["length"]
        assert set(rows["group"]) == {"human", "nonhuman"} and set(rows["strand"]) == {"+", "-"}
