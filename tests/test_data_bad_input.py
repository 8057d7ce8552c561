"""Bad input to `data prep`: non-zero exit, a message naming the file/record/column, and the old pack untouched."""
import gzip
import hashlib
import os

import pytest

from nucleotron.data_prep.cli import main as data_main
from nucleotron.data_prep.synthetic import make_genome, write_fasta

GOOD = ">chr1 first\nACGTACGTAC\nacgtNNacgt\n>chr2\nGGGGCCCCAAAATTTT\n"


def snapshot(directory):
    return {p: hashlib.sha256(open(os.path.join(directory, p), "rb").read()).hexdigest()
            for p in sorted(os.listdir(directory))}


@pytest.fixture()
def workspace(tmp_path):
    """A finished pack at tmp_path/pack made from good sources; tests then break one input and re-run."""
    write_fasta(str(tmp_path / "human.fa"), make_genome(1, {"chr1": 20_000}).items())
    write_fasta(str(tmp_path / "ape.fa"), make_genome(2, {"chr1": 20_000}).items())
    (tmp_path / "sources.tsv").write_text("path\tgroup\tassembly\nhuman.fa\thuman\th1\nape.fa\tnonhuman\tp1\n")
    assert run(tmp_path, overwrite=False) == 0
    before = snapshot(tmp_path / "pack")
    yield tmp_path
    assert snapshot(tmp_path / "pack") == before, "a failed run must leave the finished pack byte-identical"
    assert not [p for p in os.listdir(tmp_path) if ".building" in p]


def run(root, overwrite=True):
    args = ["prep", "--sources", str(root / "sources.tsv"), "--seq-len", "1024", "--out", str(root / "pack"),
            "--no-progress", "--workers", "2", "--min-len", "8"]
    return data_main(args + (["--overwrite"] if overwrite else []))


def fails_with(root, capsys, *fragments):
    capsys.readouterr()
    assert run(root) == 1
    err = capsys.readouterr().err
    assert "nucleotron data prep: error: " in err
    for fragment in fragments:
        assert fragment in err, err
    return err


def use_fasta(root, text, name="ape.fa", binary=False):
    path = root / name
    path.write_bytes(text if binary else text.encode())
    return str(path)


def test_missing_file(workspace, capsys):
    os.remove(workspace / "ape.fa")
    fails_with(workspace, capsys, "sources.tsv line 3: column 'path': file not found:", "ape.fa")


def test_fasta_without_header(workspace, capsys):
    path = use_fasta(workspace, "ACGTACGT\n>chr1\nACGT\n")
    fails_with(workspace, capsys, f"{path}: no FASTA header")


def test_empty_record(workspace, capsys):
    path = use_fasta(workspace, ">chr1\nACGTACGT\n>chrEmpty desc\n\n>chr3\nACGT\n")
    fails_with(workspace, capsys, f"{path}: record 'chrEmpty' is empty")


def test_duplicate_record_in_one_file(workspace, capsys):
    path = use_fasta(workspace, GOOD + ">chr1\nACGT\n")
    fails_with(workspace, capsys, f"{path}: duplicate record name 'chr1'")


def test_duplicate_record_across_files_of_one_assembly(workspace, capsys):
    use_fasta(workspace, ">chr9\nACGTACGTAC\n", name="ape2.fa")
    use_fasta(workspace, ">chr9\nGGGGCCCC\n", name="ape3.fa")
    with open(workspace / "sources.tsv", "a") as handle:
        handle.write("ape2.fa\tnonhuman\tp1\nape3.fa\tnonhuman\tp1\n")
    fails_with(workspace, capsys, f"{workspace / 'ape3.fa'}: duplicate record name 'chr9' in assembly 'p1'",
               "ape2.fa")


def test_illegal_character(workspace, capsys):
    path = use_fasta(workspace, ">chr1\nACGTACGTAC\n>chr2 x\nACGTA\nCGUAC\n")
    fails_with(workspace, capsys, f"{path}: record 'chr2': illegal character 'U' at base 8 (1-based)")


def test_truncated_gzip(workspace, capsys):
    data = gzip.compress((GOOD * 2000).replace(">chr1", ">c1", 1).encode())
    path = use_fasta(workspace, data[: len(data) // 2], name="ape.fa.gz", binary=True)
    (workspace / "sources.tsv").write_text("path\tgroup\tassembly\nhuman.fa\thuman\th1\nape.fa.gz\tnonhuman\tp1\n")
    fails_with(workspace, capsys, f"{path}: corrupt or truncated gzip")


def test_sources_missing_column(workspace, capsys):
    (workspace / "sources.tsv").write_text("path\tassembly\nhuman.fa\th1\n")
    fails_with(workspace, capsys, "sources.tsv: missing column(s) 'group'")


def test_sources_unknown_group(workspace, capsys):
    (workspace / "sources.tsv").write_text("path\tgroup\tassembly\nhuman.fa\thuman\th1\nape.fa\tprimate\tp1\n")
    fails_with(workspace, capsys, "sources.tsv line 3: column 'group' has unknown group 'primate'")


def test_split_without_one_group(workspace, capsys):
    capsys.readouterr()
    args = ["prep", "--sources", str(workspace / "sources.tsv"), "--seq-len", "1024", "--out",
            str(workspace / "pack"), "--no-progress", "--overwrite", "--valid-chroms", "chr7"]
    assert data_main(args) == 1
    assert "split 'valid' (['7']) has no human tokens" in capsys.readouterr().err


def test_refuses_existing_dir_without_overwrite(workspace, capsys):
    capsys.readouterr()
    assert run(workspace, overwrite=False) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_a_failing_record_stops_the_workers_waiting_for_it(workspace, capsys):
    """The next record of the pack waits for the failing one's size; the stop flag must release it, and the pool must
    be joined, not terminated (a worker killed while returning its result hangs Pool.terminate)."""
    bad = make_genome(3, {"chr1": 400_000})["chr1"][:-1] + b"U"
    write_fasta(str(workspace / "ape.fa"), [("chr1", bad), ("chr2", b"ACGT" * 300)])
    for _ in range(5):
        fails_with(workspace, capsys, f"{workspace / 'ape.fa'}: record 'chr1': illegal character 'U' at base 400000")
    assert not (workspace / "pack.work" / "stop").exists() and not list(workspace.rglob("stop"))
