"""`data prep` end to end on generated real-looking FASTA: decode-back equality, counts, 1:1 blend, determinism."""
import filecmp
import json
import os

import numpy as np
import pytest

from nucleotron.data_prep import tokens as tk
from nucleotron.data_prep.chroms import SplitRule, chromosome_of
from nucleotron.data_prep.cli import main as data_main
from nucleotron.data_prep.errors import DataPrepError
from nucleotron.data_prep.manifest import load_manifest
from nucleotron.data_prep.prep import PrepOptions, run_prep
from nucleotron.data_prep.synthetic import make_genome, write_fasta

HUMAN_A = {"chr1": 90_000, "chr2": 60_000, "chr20": 40_000, "chr21": 30_000, "chrUn_KI270302v1": 9_000}
HUMAN_B = {"HG002#1#chr1": 70_000, "HG002#1#chr20": 35_000, "HG002#1#chr21": 25_000}
CHIMP = {"NC_072398.2 Pan troglodytes isolate AG18354 chromosome 1, NHGRI_mPanTro3": 80_000,
         "NC_072418.2 Pan troglodytes isolate AG18354 chromosome 20": 30_000,
         "NC_072419.2 Pan troglodytes isolate AG18354 chromosome 21": 20_000}


def make_sources(root, iupac=3):
    """Three assemblies (one gzip), soft-masked runs, N gaps, isolated N and IUPAC codes; returns records by source."""
    genomes = {"hg38.fa": make_genome(1, HUMAN_A, iupac=iupac),
               "hg002.fa.gz": make_genome(2, HUMAN_B, iupac=iupac),
               "pantro.fa": make_genome(3, CHIMP, iupac=iupac, gap_len=(200, 3000))}
    write_fasta(str(root / "hg38.fa"), genomes["hg38.fa"].items(), width=60)
    write_fasta(str(root / "hg002.fa.gz"), genomes["hg002.fa.gz"].items(), width=80, compress=True)
    write_fasta(str(root / "pantro.fa"), genomes["pantro.fa"].items(), width=70)
    (root / "sources.tsv").write_text(
        "path\tgroup\tassembly\tspecies\n"
        "hg38.fa\thuman\tGRCh38\tHomo sapiens\n"
        "hg002.fa.gz\thuman\tHG002\tHomo sapiens\n"
        "pantro.fa\tnonhuman\tpanTro3\tPan troglodytes\n")
    return genomes


def expected_text(raw: bytes) -> str:
    text = raw.decode().upper()
    return text.translate(str.maketrans({c: "N" for c in tk.IUPAC_AMBIGUOUS}))


def read_docs(pack, prefix):
    data = np.fromfile(os.path.join(pack, prefix + ".bin"), dtype=np.uint8)
    docs = np.load(os.path.join(pack, prefix + ".docs.npy"))
    ends = np.cumsum(docs["length"].astype(np.int64) + 1)
    return data, docs, ends


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    genomes = make_sources(root)
    pack = root / "pack"
    run_prep(PrepOptions(sources=str(root / "sources.tsv"), seq_len=4096, out=str(pack), min_len=1000,
                         rc_probability=0.56, seed=7, valid_chroms=["chr20"], test_chroms=["21"], workers=2,
                         progress=False))
    return root, genomes, pack


def test_every_document_decodes_to_its_source(built):
    root, genomes, pack = built
    manifest = load_manifest(str(pack))
    sources = manifest.raw["sources"]
    checked = reverse = 0
    for name, entry in manifest.raw["datasets"].items():
        data, docs, ends = read_docs(pack, name)
        assert len(docs) == entry["documents"] and len(data) == entry["tokens"] == ends[-1]
        for doc, end in zip(docs, ends):
            tokens = data[end - doc["length"] - 1:end]
            assert tokens[-1] == tk.EOD and not np.any(tokens[:-1] == tk.EOD)
            genome = genomes[os.path.basename(sources[doc["source"]]["path"])]
            record_raw = list(genome.values())[doc["record"]]
            source_text = expected_text(record_raw)
            piece = source_text[doc["start"]:doc["start"] + doc["length"]]
            if doc["reverse"]:
                piece = piece[::-1].translate(str.maketrans("ACGTN", "TGCAN"))
                reverse += 1
            decoded = tk.decode(tokens[:-1])
            assert decoded == piece
            forward = decoded if not doc["reverse"] else decoded[::-1].translate(str.maketrans("ACGTN", "TGCAN"))
            assert forward in source_text
            checked += 1
    assert checked > 40 and 0.3 < reverse / checked < 0.8


def test_fragments_follow_the_rules(built):
    _, _, pack = built
    for name in load_manifest(str(pack)).raw["datasets"]:
        data, docs, ends = read_docs(pack, name)
        assert np.all(docs["length"] <= 4096) and np.all(docs["length"] >= 1000)
        for doc, end in zip(docs, ends):
            tokens = data[end - doc["length"] - 1:end - 1]
            assert np.count_nonzero(tokens == tk.N) <= 0.1 * len(tokens)
            run = np.diff(np.flatnonzero(np.concatenate(([1], tokens != tk.N, [1]))))
            assert run.max() - 1 < 100, "a 100+ N run must split the contig"


def test_manifest_counts_splits_and_blend(built):
    _, _, pack = built
    manifest = load_manifest(str(pack))
    raw = manifest.raw
    assert raw["format_version"] == 1 and manifest.eod == 12 and manifest.pad == 0 and manifest.vocab_size == 128
    assert manifest.vocab == {"PAD": 0, "C": 5, "G": 6, "T": 7, "A": 8, "N": 9, "EOD": 12}
    assert raw["strand"]["rc_probability"] == 0.56 and raw["strand"]["seed"] == 7
    assert [len(s["sha256"]) for s in raw["sources"]] == [64, 64, 64]
    contigs = (pack / "contigs.tsv").read_text().splitlines()
    split_of = {line.split("\t")[1]: line.split("\t")[3] for line in contigs[1:]}
    assert split_of["chr20"] == split_of["HG002#1#chr20"] == split_of["NC_072418.2"] == "valid"
    assert split_of["chr21"] == split_of["HG002#1#chr21"] == split_of["NC_072419.2"] == "test"
    assert split_of["chrUn_KI270302v1"] == split_of["chr1"] == "train"
    for split in ("train", "valid", "test"):
        per_assembly = {a: c["splits"][split]["tokens"] for a, c in raw["counts"]["by_assembly"].items()}
        on_disk = {g: os.path.getsize(pack / f"{g}_{split}.bin") for g in ("human", "nonhuman")}
        assert per_assembly["GRCh38"] + per_assembly["HG002"] == on_disk["human"]
        assert per_assembly["panTro3"] == on_disk["nonhuman"]
        prefixes, weights = manifest.blend_paths(split)
        assert prefixes == [str(pack / f"human_{split}"), str(pack / f"nonhuman_{split}")]
        assert manifest.blend[split].on_disk_tokens == on_disk
        # megatron samples datasets in proportion to the weights and every sample has seq_len + 1 tokens
        assert weights[0] / sum(weights) == pytest.approx(0.5, abs=1e-12)
        assert manifest.blend[split].expected_token_share == {"human": 0.5, "nonhuman": 0.5}


def test_packs_are_megatron_indexed_datasets(built, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
    import torch
    _, _, pack = built
    data, docs, ends = read_docs(pack, "nonhuman_valid")
    dataset = IndexedDataset(str(pack / "nonhuman_valid"))
    assert len(dataset) == len(docs)
    for i, end in enumerate(ends):
        assert np.array_equal(dataset[i], data[end - docs["length"][i] - 1:end])
    builder = IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=np.uint8)
    for i, end in enumerate(ends):
        builder.add_item(torch.from_numpy(data[end - docs["length"][i] - 1:end].copy()))
        builder.end_document()
    builder.finalize(str(tmp_path / "ref.idx"))
    assert (tmp_path / "ref.idx").read_bytes() == (pack / "nonhuman_valid.idx").read_bytes()
    assert (tmp_path / "ref.bin").read_bytes() == (pack / "nonhuman_valid.bin").read_bytes()


def test_same_bytes_with_one_worker_and_resume_skips_finished_records(built, tmp_path, capsys):
    root, _, pack = built
    opts = dict(sources=str(root / "sources.tsv"), seq_len=4096, min_len=1000, rc_probability=0.56, seed=7,
                valid_chroms=["chr20"], test_chroms=["21"], progress=False)
    other = tmp_path / "one_worker"
    work = tmp_path / "work"
    run_prep(PrepOptions(out=str(other), workers=1, work_dir=str(work), keep_work=True, **opts))
    for name in ("human_train", "nonhuman_valid", "human_test"):
        assert filecmp.cmp(pack / f"{name}.bin", other / f"{name}.bin", shallow=False)
        assert filecmp.cmp(pack / f"{name}.idx", other / f"{name}.idx", shallow=False)
    # simulate a crash: two records lost their done markers, so only they are cut again
    markers = sorted(work.rglob("*.done"))
    assert len(markers) == 11
    for marker in markers[:2]:
        marker.unlink()
    capsys.readouterr()
    run_prep(PrepOptions(out=str(other), workers=2, work_dir=str(work), overwrite=True, **opts))
    err = capsys.readouterr().err
    assert "2 record(s) to cut" in err and "9 already done" in err
    assert filecmp.cmp(pack / "human_train.bin", other / "human_train.bin", shallow=False)
    assert not work.exists(), "the work dir is removed after success unless --keep-work"


def test_resume_log_names_the_skipped_records(built, tmp_path, capsys):
    root, _, _ = built
    work = tmp_path / "work"
    opts = dict(sources=str(root / "sources.tsv"), seq_len=4096, workers=2, work_dir=str(work), progress=False)
    run_prep(PrepOptions(out=str(tmp_path / "a"), keep_work=True, **opts))
    for marker in sorted(work.rglob("*.done"))[:3]:
        marker.unlink()
    capsys.readouterr()
    run_prep(PrepOptions(out=str(tmp_path / "b"), **opts))
    err = capsys.readouterr().err
    assert "3 record(s) to cut" in err and "8 already done" in err
    assert filecmp.cmp(tmp_path / "a" / "human_train.bin", tmp_path / "b" / "human_train.bin", shallow=False)


def test_forward_only_and_strand_seed(built, tmp_path):
    root, _, _ = built
    base = dict(sources=str(root / "sources.tsv"), seq_len=4096, workers=2, progress=False)
    run_prep(PrepOptions(out=str(tmp_path / "fwd"), **base))
    assert not np.load(tmp_path / "fwd" / "human_train.docs.npy")["reverse"].any()
    run_prep(PrepOptions(out=str(tmp_path / "s1"), rc_probability=0.5, seed=1, **base))
    run_prep(PrepOptions(out=str(tmp_path / "s2"), rc_probability=0.5, seed=2, **base))
    r1 = np.load(tmp_path / "s1" / "human_train.docs.npy")["reverse"]
    r2 = np.load(tmp_path / "s2" / "human_train.docs.npy")["reverse"]
    assert len(r1) == len(r2) and not np.array_equal(r1, r2)


def test_refuses_to_overwrite_then_swaps_atomically(built, tmp_path):
    root, _, pack = built
    out = tmp_path / "pack"
    opts = dict(sources=str(root / "sources.tsv"), out=str(out), workers=2, progress=False)
    run_prep(PrepOptions(seq_len=4096, **opts))
    before = (out / "manifest.json").read_text()
    with pytest.raises(DataPrepError, match="already exists; pass --overwrite"):
        run_prep(PrepOptions(seq_len=8192, **opts))
    assert (out / "manifest.json").read_text() == before
    run_prep(PrepOptions(seq_len=8192, overwrite=True, **opts))
    assert json.loads((out / "manifest.json").read_text())["seq_len"] == 8192
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pack"], "no temporary or old directories left behind"


def test_gene_filter_keeps_only_fragments_near_genes(tmp_path):
    genome = make_genome(5, {"chr1": 120_000, "chr2": 50_000}, gaps=0)
    write_fasta(str(tmp_path / "h.fa"), genome.items())
    write_fasta(str(tmp_path / "c.fa"), make_genome(6, {"chr1": 120_000}, gaps=0).items())
    gff = "##gff-version 3\n" + "".join(
        f"{seq}\tsrc\t{kind}\t{s}\t{e}\t.\t+\t.\tID=x\n"
        for seq, kind, s, e in [("chr1", "gene", 30_001, 31_000), ("chr1", "exon", 90_001, 91_000),
                                ("chr2", "gene", 1, 100)])
    (tmp_path / "h.gff3").write_text(gff)
    (tmp_path / "c.gff3").write_text("chr1\tsrc\tgene\t100001\t100500\t.\t+\t.\tID=y\n")
    (tmp_path / "s.tsv").write_text("path\tgroup\tassembly\tannotation\nh.fa\thuman\th\th.gff3\n"
                                    "c.fa\tnonhuman\tc\tc.gff3\n")
    run_prep(PrepOptions(sources=str(tmp_path / "s.tsv"), seq_len=4096, out=str(tmp_path / "p"), gene_window=5120,
                         workers=1, progress=False))
    docs = np.load(tmp_path / "p" / "human_train.docs.npy")
    spans = sorted((int(d["record"]), int(d["start"]), int(d["start"] + d["length"])) for d in docs)
    # gene chr1:30000-31000 widened by 5120 -> [24880, 36120): fragments starting 24576..32768; chr2 gene at 0..100
    assert spans == [(0, 24576, 28672), (0, 28672, 32768), (0, 32768, 36864), (1, 0, 4096), (1, 4096, 8192)]
    assert json.loads((tmp_path / "p" / "manifest.json").read_text())["fragments"]["gene_window"] == 5120


def test_chromosome_names_normalise_across_naming_schemes():
    names = [("chr20", ""), ("20", ""), ("Chr20", ""), ("HG002#2#chr20", ""), ("chr20_KI270869v1_random", ""),
             ("NC_000020.11", "Homo sapiens chromosome 20, GRCh38.p14 Primary Assembly")]
    assert {chromosome_of(n, d) for n, d in names} == {"20"}
    assert chromosome_of("ctg7", "", {"ctg7": "chr21"}) == "21"
    assert chromosome_of("chrM", "") == chromosome_of("MT", "") == "MT"
    rule = SplitRule(valid=["chr20"], test=["chr21", "22"])
    assert [rule.split_of(c) for c in ("20", "21", "22", "1", "X")] == ["valid", "test", "test", "train", "train"]
    with pytest.raises(DataPrepError, match=r"\['20'\] are in both"):
        SplitRule(valid=["chr20"], test=["20"])


def test_manifest_reader_rejects_unknown_format_version(built, tmp_path):
    _, _, pack = built
    content = json.loads((pack / "manifest.json").read_text())
    content["format_version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(content))
    with pytest.raises(DataPrepError, match="format_version 99 is not supported"):
        load_manifest(str(tmp_path))


def test_cli_prep_runs(tmp_path):
    make_sources(tmp_path)
    rc = data_main(["prep", "--sources", str(tmp_path / "sources.tsv"), "--seq-len", "8192", "--out",
                    str(tmp_path / "p"), "--valid-chroms", "chr20", "--no-progress", "--workers", "2"])
    assert rc == 0 and load_manifest(str(tmp_path / "p")).seq_len == 8192


def soft_text(raw: bytes) -> str:
    """The source with IUPAC codes -> N, case kept (what a --soft-mask pack decodes to)."""
    iupac = tk.IUPAC_AMBIGUOUS
    return raw.decode().translate(str.maketrans({**{c: "N" for c in iupac}, **{c.lower(): "n" for c in iupac}}))


def test_soft_mask_bit_keeps_the_case_of_every_base(built, tmp_path):
    """--soft-mask: the same pack as without it once the bit is cleared, and the bit is exactly the source's lower
    case, on both strands (lower-case n and IUPAC codes included)."""
    root, genomes, plain = built
    lowered = dict(genomes["pantro.fa"])                   # add lower-case n and IUPAC codes inside the first record
    first = next(iter(lowered))
    seq = bytearray(lowered[first])
    seq[1000:1006], seq[5000:5002] = b"nnnacg", b"ry"
    lowered[first] = bytes(seq)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("hg38.fa", "hg002.fa.gz", "sources.tsv"):
        os.symlink(root / name, src / name)
    write_fasta(str(src / "pantro.fa"), lowered.items(), width=70)
    reference, soft = tmp_path / "plain", tmp_path / "soft"
    for out, soft_mask in ((reference, False), (soft, True)):
        run_prep(PrepOptions(sources=str(src / "sources.tsv"), seq_len=4096, out=str(out), min_len=1000,
                             rc_probability=0.56, seed=7, valid_chroms=["chr20"], test_chroms=["21"], workers=2,
                             soft_mask=soft_mask, progress=False))
    manifest = load_manifest(str(soft))
    assert manifest.soft_mask_bit == tk.SOFT_MASK_BIT and load_manifest(str(reference)).soft_mask_bit is None
    sources = {**genomes, "pantro.fa": lowered}
    complement = str.maketrans("ACGTNacgtn", "TGCANtgcan")
    masked = checked = 0
    for name in manifest.raw["datasets"]:
        data, docs, ends = read_docs(soft, name)
        assert np.array_equal(data & tk.ID_BITS, np.fromfile(reference / f"{name}.bin", dtype=np.uint8))
        for doc, end in zip(docs, ends):
            record = list(sources[os.path.basename(manifest.raw["sources"][doc["source"]]["path"])].values())
            piece = soft_text(record[doc["record"]])[doc["start"]:doc["start"] + doc["length"]]
            if doc["reverse"]:
                piece = piece[::-1].translate(complement)
            assert tk.decode(data[end - doc["length"] - 1:end - 1]) == piece
            masked += sum(c.islower() for c in piece)
            checked += 1
    assert checked > 40 and masked > 0.2 * sum(d["bases"] for d in manifest.raw["datasets"].values())
    assert data_main(["stats", str(soft), "--json"]) == 0


def test_soft_mask_stats_count_the_masked_bases(built, tmp_path, capsys):
    root, _, _ = built
    out = tmp_path / "soft"
    assert data_main(["prep", "--sources", str(root / "sources.tsv"), "--seq-len", "4096", "--out", str(out),
                      "--soft-mask", "--valid-chroms", "chr20", "--no-progress", "--workers", "1"]) == 0
    capsys.readouterr()
    assert data_main(["stats", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for name, entry in result["datasets"].items():
        data = np.fromfile(out / f"{name}.bin", dtype=np.uint8)
        bases = data[data != tk.EOD]
        assert entry["bases"] == len(bases)
        assert entry["soft_masked_fraction"] == pytest.approx(np.count_nonzero(bases & tk.SOFT_MASK_BIT) / len(bases))
        assert entry["gc_content"] == pytest.approx(np.isin(bases & tk.ID_BITS, [tk.C, tk.G]).sum()
                                                    / np.isin(bases & tk.ID_BITS, [tk.A, tk.C, tk.G, tk.T]).sum())
    assert data_main(["stats", str(out)]) == 0
    assert "masked" in capsys.readouterr().out
