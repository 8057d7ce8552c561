"""Packs that survive careless and concurrent use: --overwrite replaces only packs, one prep per --out at a time,
leftovers of killed runs cleaned, every pack file checked against the manifest's sizes and checksums, duplicate
sources refused, and system errors (disk full) reported in one line."""
import errno
import hashlib
import json
import logging
import os
import shutil

import numpy as np
import pytest

from nucleotron.data_prep import manifest as manifest_module
from nucleotron.data_prep import merge, records
from nucleotron.data_prep.cli import main as data_main
from nucleotron.data_prep.errors import DataPrepError
from nucleotron.data_prep.lock import lock_path, pack_lock
from nucleotron.data_prep.manifest import load_manifest, write_manifest
from nucleotron.data_prep.prep import PrepOptions, run_prep
from nucleotron.data_prep.synthetic import make_genome, write_fasta
from nucleotron.data_prep.verify import verify_pack
from nucleotron.data_prep.workdir import write_json_atomic

REBUILD = "re-run `nucleotron data prep`"
DEAD_PID = 4_194_304 + 17          # above Linux's largest pid_max: never a live process


def make_sources(root, rows=(("human.fa", "human", "h1"), ("ape.fa", "nonhuman", "p1"))):
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "human.fa").exists():
        write_fasta(str(root / "human.fa"), make_genome(1, {"chr1": 12_000}).items())
        write_fasta(str(root / "ape.fa"), make_genome(2, {"chr1": 12_000}).items())
    (root / "sources.tsv").write_text("path\tgroup\tassembly\n" + "".join("\t".join(r) + "\n" for r in rows))
    return root / "sources.tsv"


def prep(root, out=None, **options):
    options = {"seq_len": 1024, "min_len": 8, "workers": 1, "progress": False, **options}
    return run_prep(PrepOptions(sources=str(root / "sources.tsv"), out=str(out or root / "pack"), **options))


def snapshot(directory):
    return {p: hashlib.sha256(open(os.path.join(directory, p), "rb").read()).hexdigest()
            for p in sorted(os.listdir(directory))}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    make_sources(root)
    prep(root)
    return root


@pytest.fixture()
def pack(built, tmp_path):
    """A fresh copy of the module's pack to damage."""
    return shutil.copytree(built / "pack", tmp_path / "pack")


# --- the manifest ------------------------------------------------------------------------------------------------

def test_manifest_marks_the_pack_names_its_groups_and_returns_what_it_wrote(tmp_path, monkeypatch):
    make_sources(tmp_path)
    monkeypatch.setattr(manifest_module, "FORMAT_VERSION", 7)   # merge.py must not write its own literal version
    returned = prep(tmp_path)
    on_disk = json.loads((tmp_path / "pack" / "manifest.json").read_text())
    assert returned == on_disk and on_disk["format_version"] == 7 and on_disk["kind"] == "nucleotron.pack"
    monkeypatch.undo()
    on_disk["format_version"] = manifest_module.FORMAT_VERSION
    (tmp_path / "pack" / "manifest.json").write_text(json.dumps(on_disk))
    assert load_manifest(str(tmp_path / "pack")).groups == ["human", "nonhuman"]


def test_manifest_and_work_files_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    write_manifest(str(tmp_path), {"blend": {}})
    assert synced, "manifest.json must be fsynced before it is renamed into place"
    synced.clear()
    write_json_atomic(str(tmp_path / "x.done"), {"documents": 1})
    assert synced and json.loads((tmp_path / "x.done").read_text()) == {"documents": 1}
    assert sorted(os.listdir(tmp_path)) == ["manifest.json", "x.done"]


# --- --out and --overwrite ---------------------------------------------------------------------------------------

def test_overwrite_refuses_a_folder_holding_the_input_fasta(tmp_path):
    data = tmp_path / "data"
    make_sources(data)
    before = snapshot(data)
    with pytest.raises(DataPrepError, match=f"--overwrite would delete {data}, which holds {data / 'human.fa'}"):
        prep(data, out=data, overwrite=True)
    assert snapshot(data) == before


def test_overwrite_refuses_a_non_empty_folder_without_a_pack_manifest(tmp_path):
    make_sources(tmp_path)
    (tmp_path / "pack").mkdir()
    (tmp_path / "pack" / "notes.txt").write_text("mine")
    with pytest.raises(DataPrepError, match=f"--overwrite refuses to replace {tmp_path / 'pack'}: it is not a pack"):
        prep(tmp_path, overwrite=True)
    assert (tmp_path / "pack" / "notes.txt").read_text() == "mine"
    with pytest.raises(DataPrepError, match="already exists; choose another --out"):
        prep(tmp_path)


def test_out_naming_a_file_is_refused_with_or_without_overwrite(tmp_path, capsys):
    make_sources(tmp_path)
    (tmp_path / "pack").write_text("not a pack")
    for flags in ([], ["--overwrite"]):
        assert data_main(["prep", "--sources", str(tmp_path / "sources.tsv"), "--seq-len", "1024", "--out",
                          str(tmp_path / "pack"), "--no-progress", *flags]) == 1
        err = capsys.readouterr().err
        assert f"error: --out {tmp_path / 'pack'} is a file, not a pack directory" in err and "Traceback" not in err
    assert (tmp_path / "pack").read_text() == "not a pack"


def test_pack_made_before_the_marker_is_still_replaced(pack, built):
    manifest = json.loads((pack / "manifest.json").read_text())
    del manifest["kind"], manifest["integrity"]
    (pack / "manifest.json").write_text(json.dumps(manifest))
    prep(built, out=pack, overwrite=True)
    assert json.loads((pack / "manifest.json").read_text())["kind"] == "nucleotron.pack"


# --- one prep per --out ------------------------------------------------------------------------------------------

def test_second_prep_on_one_out_stops_naming_the_holder(built, tmp_path):
    out = tmp_path / "pack"
    with pack_lock(str(out), print):
        holder = json.loads(open(lock_path(str(out))).read())
        with pytest.raises(DataPrepError, match=rf"{out} is being written by another `nucleotron data prep` "
                                                rf"\(pid {os.getpid()} on host {holder['host']} since"):
            prep(built, out=out)
        assert not out.exists()
    assert not os.path.exists(lock_path(str(out)))


def test_stale_lock_and_dead_runs_leftovers_are_taken_over_and_removed(built, tmp_path, capsys):
    out = tmp_path / "pack"
    with open(lock_path(str(out)), "w") as handle:
        json.dump({"pid": DEAD_PID, "host": "gone", "since": "2026-01-01"}, handle)
    dead = tmp_path / f".pack.building-{DEAD_PID}"
    live = tmp_path / f".pack.building-{os.getppid()}"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "human_train.bin").write_bytes(b"\x08" * 10)
    prep(built, out=out)
    err = capsys.readouterr().err
    assert f"taking over the stale lock {lock_path(str(out))} left by pid {DEAD_PID} on host gone" in err
    assert f"removed {dead}, left by a killed run" in err and not dead.exists()
    assert f"left {live} in place: process {os.getppid()} is running" in err and live.exists()
    verify_pack(str(out))
    assert not os.path.exists(lock_path(str(out)))


def test_previous_pack_left_by_a_killed_publish_is_kept(built, tmp_path, capsys):
    out = tmp_path / "pack"
    previous = shutil.copytree(built / "pack", tmp_path / f".pack.building-{DEAD_PID}.old")
    prep(built, out=out)
    assert f"left {previous} in place: it holds the previous pack" in capsys.readouterr().err
    verify_pack(str(previous))


# --- verify_pack ---------------------------------------------------------------------------------------------------

def test_a_good_pack_verifies_sampled_and_full(pack, capsys):
    verify_pack(str(pack))
    verify_pack(str(pack), full=True)
    assert data_main(["verify", str(pack), "--full"]) == 0
    assert f"{pack}: ok (full check)" in capsys.readouterr().out


def expect_bad(pack, fragment, full=False):
    with pytest.raises(DataPrepError) as err:
        verify_pack(str(pack), full=full)
    assert fragment in str(err.value) and REBUILD in str(err.value), str(err.value)


def test_truncated_bin_is_named(pack):
    path = pack / "human_train.bin"
    size = path.stat().st_size
    os.truncate(path, size - 100)
    expect_bad(pack, f"{path} holds {size - 100} bytes but its index human_train.idx describes {size}: the file is "
                     f"truncated")


def test_bad_index_header_is_named(pack):
    path = pack / "nonhuman_train.idx"
    data = bytearray(path.read_bytes())
    data[:4] = b"XXXX"
    path.write_bytes(bytes(data))
    expect_bad(pack, f"{path}: not a megatron indexed-dataset index")


def test_truncated_index_is_named(pack):
    path = pack / "human_train.idx"
    os.truncate(path, path.stat().st_size - 8)
    expect_bad(pack, f"{path}: {path.stat().st_size} bytes but its header describes")


def test_bin_overwritten_with_other_bytes_of_the_same_size_is_caught(pack):
    path = pack / "human_train.bin"
    size = path.stat().st_size
    path.write_bytes(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    expect_bad(pack, f"{path}: content differs from what data prep wrote (sampled sha256")
    expect_bad(pack, f"{path}: content differs from what data prep wrote (sha256", full=True)


def test_one_changed_byte_is_caught_by_the_full_check(pack):
    path = pack / "nonhuman_train.bin"
    with open(path, "r+b") as handle:
        handle.seek(path.stat().st_size // 2 + 3)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 1]))
    expect_bad(pack, f"{path}: content differs from what data prep wrote (sha256", full=True)


def test_missing_file_is_named(pack, capsys):
    os.remove(pack / "nonhuman_train.bin")
    expect_bad(pack, f"{pack / 'nonhuman_train.bin'} is missing from the pack")
    assert data_main(["verify", str(pack)]) == 1
    assert f"nucleotron data verify: error: {pack / 'nonhuman_train.bin'} is missing" in capsys.readouterr().err


def test_pack_without_checksums_gets_size_checks_and_a_warning(pack, caplog):
    manifest = json.loads((pack / "manifest.json").read_text())
    del manifest["integrity"]
    (pack / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="nucleotron.data_prep.verify"):
        verify_pack(str(pack))
    assert [r.getMessage() for r in caplog.records] == [
        f"{pack}: pack made before pack checksums; only sizes were checked (re-run `nucleotron data prep` to add "
        f"them)"]
    os.truncate(pack / "human_train.bin", 10)
    expect_bad(pack, "human_train.bin holds 10 bytes")


# --- duplicate sources -------------------------------------------------------------------------------------------

def test_one_fasta_listed_twice_is_refused(tmp_path):
    make_sources(tmp_path, rows=(("human.fa", "human", "h1"), ("ape.fa", "nonhuman", "p1"),
                                 ("./ape.fa", "nonhuman", "p2")))
    with pytest.raises(DataPrepError, match=rf"sources.tsv: lines 3 and 4 are the same file \({tmp_path}/ape.fa as "
                                            rf"nonhuman 'p1'; {tmp_path}/ape.fa as nonhuman 'p2'\)"):
        prep(tmp_path)


def test_identical_contents_as_human_and_nonhuman_are_refused_unless_allowed(tmp_path):
    make_sources(tmp_path, rows=(("human.fa", "human", "h1"), ("copy.fa", "nonhuman", "p1")))
    shutil.copyfile(tmp_path / "human.fa", tmp_path / "copy.fa")
    with pytest.raises(DataPrepError, match=r"lines 2 and 3 are files with identical contents, sha256 \w+\.\.\. "
                                            r".*--allow-duplicate-sources"):
        prep(tmp_path)
    manifest = prep(tmp_path, allow_duplicate_sources=True)
    by_group = manifest["counts"]["by_group"]
    assert by_group["human"]["train"] == by_group["nonhuman"]["train"]


# --- one-line errors -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stage", ["cutting a record", "finishing the pack"])
def test_disk_full_is_one_line_and_harms_no_pack(pack, built, capsys, monkeypatch, stage):
    before = snapshot(pack)

    def full(path, *_args, **_kwargs):
        named = [] if stage == "cutting a record" else [path + ".idx"]     # os.pwritev names no file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), *named)
    if stage == "cutting a record":
        monkeypatch.setattr(records, "write_documents", full)
        where = f"{pack}.work/"
    else:
        monkeypatch.setattr(merge, "write_index", full)
        where = f"{pack.parent}/.pack.building-{os.getpid()}/human_train.idx"
    assert data_main(["prep", "--sources", str(built / "sources.tsv"), "--seq-len", "1024", "--min-len", "8",
                      "--out", str(pack), "--overwrite", "--no-progress", "--workers", "1"]) == 1
    err = capsys.readouterr().err
    line = next(l for l in err.splitlines() if "error:" in l)
    assert line.startswith(f"nucleotron data prep: error: {where}") and "human_train" in line
    assert "no space left on the device (" in line and "free there); free some space" in line
    assert "re-run the same command" in line and "Traceback" not in err
    assert snapshot(pack) == before
    assert not [p for p in os.listdir(pack.parent) if ".building" in p or p.endswith(".lock")]


@pytest.mark.parametrize("workers", ["-1", "0"])
def test_workers_below_one_is_an_error(built, tmp_path, capsys, workers):
    assert data_main(["prep", "--sources", str(built / "sources.tsv"), "--seq-len", "1024", "--out",
                      str(tmp_path / "pack"), "--workers", workers]) == 1
    assert f"error: --workers {workers} must be at least 1 (leave it out to use all" in capsys.readouterr().err


def test_default_workers_are_the_cores_this_process_may_use(built, tmp_path, capsys, monkeypatch):
    """A Slurm job given 1 core of a 64-core node: one worker, not 64 (the affinity mask, not os.cpu_count)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert data_main(["prep", "--sources", str(built / "sources.tsv"), "--seq-len", "1024", "--out",
                      str(tmp_path / "pack"), "--no-progress"]) == 0
    assert "source file(s) with 1 worker(s)" in capsys.readouterr().err


def test_utf8_byte_order_mark_is_skipped(built, tmp_path):
    tsv = make_sources(tmp_path)
    tsv.write_bytes(b"\xef\xbb\xbf" + tsv.read_bytes())
    for name in ("human.fa", "ape.fa"):
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + (built / name).read_bytes())
    prep(tmp_path)
    for name in ("human_train.bin", "nonhuman_train.bin", "human_train.idx"):
        assert (tmp_path / "pack" / name).read_bytes() == (built / "pack" / name).read_bytes()
