"""Chromosome names from real-world FASTA headers, and the guard against a split that leaks through unnamed contigs."""
import json

import pytest

from nucleotron.data_prep.chroms import chromosome_of, is_nuclear_chromosome
from nucleotron.data_prep.cli import main as data_main
from nucleotron.data_prep.synthetic import make_genome, write_fasta

# (record name, description) as they appear after '>' in public FASTA files
HEADERS = {
    "MT": [("GU112745.1", "Pan troglodytes schweinfurthii isolate ISIS #925 mitochondrion, complete genome"),
           ("NC_012920.1", "Homo sapiens mitochondrion, complete genome"),
           ("NC_001643.1", "Pan troglodytes mitochondrial DNA, complete genome"),
           ("MT", ""), ("M", ""), ("chrM", ""), ("chrMT", ""), ("HG002#1#chrM", ""),
           ("MT", "dna:chromosome chromosome:GRCh38:MT:1:16569:1 REF")],
    "7": [("NC_000007.14", "Homo sapiens chromosome 7, GRCh38.p14 Primary Assembly"),
          ("CM000669.2", "Homo sapiens chromosome 7, GRCh38 reference primary assembly"),
          ("NC_060931.1", "Homo sapiens isolate CHM13 chromosome 7, alternate assembly T2T-CHM13v2.0"),
          ("7", "dna:chromosome chromosome:GRCh38:7:1:159345973:1 REF"),
          ("NT_187394.1", "Homo sapiens chromosome 7 unlocalized genomic scaffold, GRCh38.p14 Primary Assembly "
                          "HSCHR7_CTG1_UNLOCALIZED"),
          ("chr7_KI270803v1_alt", ""), ("chr7", ""), ("Chr7", ""), ("HG002#2#chr7", "")],
    "2A": [("NC_072399.2", "Pan troglodytes isolate AG18354 chromosome 2A, NHGRI_mPanTro3-v2.0_pri")],
    "X": [("NC_000023.11", "Homo sapiens chromosome X, GRCh38.p14 Primary Assembly")],
    "UN": [("NT_167208.1", "Homo sapiens unplaced genomic scaffold, GRCh38.p14 Primary Assembly "
                           "HSCHRUN_RANDOM_CTG29"),
           ("chrUn_KI270302v1", "")],
}


@pytest.mark.parametrize("chromosome", sorted(HEADERS))
def test_headers_normalise(chromosome):
    assert {chromosome_of(name, description) for name, description in HEADERS[chromosome]} == {chromosome}


def test_names_without_a_chromosome_stay_recognisable():
    assert chromosome_of("NW_019936523.1", "") == "NW_019936523.1"       # not cut at '_' into 'NW'
    assert chromosome_of("HG00438#1#JAHBCB010000001.1", "") == "JAHBCB010000001.1"
    assert [is_nuclear_chromosome(c) for c in ("1", "22", "X", "Y", "2B", "MT", "UN", "JAHBCB010000001.1")] == \
        [True, True, True, True, True, False, False, False]


@pytest.fixture()
def hprc_like(tmp_path):
    """A named human reference, an HPRC-like assembly of unnamed contigs and a chimp assembly."""
    write_fasta(str(tmp_path / "ref.fa"), make_genome(1, {"chr1": 12_000, "chr20": 9_000}).items())
    write_fasta(str(tmp_path / "hap.fa"), make_genome(2, {"HG01#1#ctg1": 12_000, "HG01#1#ctg2": 9_000}).items())
    write_fasta(str(tmp_path / "ape.fa"), make_genome(3, {"chr1": 12_000, "chr20": 9_000}).items())
    (tmp_path / "sources.tsv").write_text("path\tgroup\tassembly\nref.fa\thuman\tGRCh38\nhap.fa\thuman\tHG01.1\n"
                                          "ape.fa\tnonhuman\tpanTro\n")
    return tmp_path


def prep(root, *extra):
    return data_main(["prep", "--sources", str(root / "sources.tsv"), "--seq-len", "1000", "--out", str(root / "pack"),
                      "--no-progress", "--workers", "2", "--valid-chroms", "chr20", *extra])


def test_unnamed_human_assembly_stops_a_held_out_split(hprc_like, capsys):
    assert prep(hprc_like) == 1
    err = capsys.readouterr().err
    assert "human assembly 'HG01.1'" in err and str(hprc_like / "hap.fa") in err
    assert "'HG01#1#ctg1' -> 'CTG1'" in err
    assert "Add a 'chrom_map' column" in err and str(hprc_like / "sources.tsv") in err
    assert "--allow-unsplit-human" in err
    assert not (hprc_like / "pack").exists()


def test_chrom_map_places_the_contigs(hprc_like):
    (hprc_like / "hap.map").write_text("HG01#1#ctg1\tchr1\nHG01#1#ctg2\tchr20\n")
    (hprc_like / "sources.tsv").write_text("path\tgroup\tassembly\tchrom_map\nref.fa\thuman\tGRCh38\t\n"
                                           "hap.fa\thuman\tHG01.1\thap.map\nape.fa\tnonhuman\tpanTro\t\n")
    assert prep(hprc_like) == 0
    rows = [line.split("\t") for line in (hprc_like / "pack" / "contigs.tsv").read_text().splitlines()[1:]]
    assert {(r[1], r[2], r[3]) for r in rows if r[0] == "HG01.1"} == {("HG01#1#ctg1", "1", "train"),
                                                                       ("HG01#1#ctg2", "20", "valid")}
    assert "unsplit_assemblies" not in json.loads((hprc_like / "pack" / "manifest.json").read_text())["splits"]


def test_flag_lets_the_assembly_into_train_and_the_manifest_says_so(hprc_like, capsys):
    assert prep(hprc_like, "--allow-unsplit-human") == 0
    assert "note: human assembly 'HG01.1' has no record named after a chromosome" in capsys.readouterr().err
    manifest = json.loads((hprc_like / "pack" / "manifest.json").read_text())
    assert manifest["splits"]["unsplit_assemblies"] == ["HG01.1"]
    assert manifest["counts"]["by_assembly"]["HG01.1"]["splits"].keys() == {"train"}


def test_no_held_out_chromosomes_no_guard(hprc_like):
    args = ["prep", "--sources", str(hprc_like / "sources.tsv"), "--seq-len", "1000", "--out",
            str(hprc_like / "pack"), "--no-progress", "--workers", "1"]
    assert data_main(args) == 0


def test_mitochondrion_only_assembly_is_not_unnamed(hprc_like):
    write_fasta(str(hprc_like / "hap.fa"),
                [("NC_012920.1 Homo sapiens mitochondrion, complete genome", make_genome(4, {"m": 3_000})["m"])])
    assert prep(hprc_like) == 0
