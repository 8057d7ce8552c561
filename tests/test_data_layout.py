"""Records written in place: offsets agreed between workers, and resume when a crash hit after packs were moved."""
import filecmp
import threading
import time

import numpy as np
import pytest

from nucleotron.data_prep import prep as prep_module
from nucleotron.data_prep import workers
from nucleotron.data_prep.layout import PackLayout, claim_offset
from nucleotron.data_prep.prep import PrepOptions, run_prep
from nucleotron.data_prep.synthetic import make_genome, write_fasta


def test_offset_waits_for_earlier_members_of_its_own_pack_only(tmp_path):
    packs = {"human_train": [(0, 0), (0, 2), (1, 0)], "human_valid": [(0, 1)]}
    layout = PackLayout(str(tmp_path), packs, ["sha-a", "sha-b"])
    assert layout.prepare() == {}
    slots = layout.slots
    assert [slots[m].index for m in packs["human_train"]] == [0, 1, 2] and slots[(0, 1)].first == 3
    assert claim_offset(layout.sizes_path, slots[(0, 1)], 50) == 0, "first of its pack: no wait"
    got = []
    waiter = threading.Thread(target=lambda: got.append(claim_offset(layout.sizes_path, slots[(1, 0)], 7)))
    waiter.start()
    time.sleep(0.05)
    assert not got, "must wait until (0, 0) and (0, 2) have published"
    assert claim_offset(layout.sizes_path, slots[(0, 0)], 100) == 0
    time.sleep(0.05)
    assert not got
    assert claim_offset(layout.sizes_path, slots[(0, 2)], 30) == 100
    waiter.join(timeout=5)
    assert got == [130]
    assert np.load(layout.sizes_path).tolist() == [100, 30, 7, 50]


def test_a_waiting_record_gives_up_when_the_run_stops(tmp_path, monkeypatch):
    layout = PackLayout(str(tmp_path), {"human_train": [(0, 0), (0, 1)]}, ["sha-a"])
    layout.prepare()
    monkeypatch.setattr(workers, "_stop_path", str(tmp_path / "stop"))
    (tmp_path / "stop").touch()                       # as the pool does when (0, 0) failed before publishing
    with pytest.raises(workers.Stopped):
        claim_offset(layout.sizes_path, layout.slots[(0, 1)], 10)


def test_another_placement_gets_another_layout(tmp_path):
    a = PackLayout(str(tmp_path), {"human_train": [(0, 0)]}, ["sha-a"])
    assert a.directory != PackLayout(str(tmp_path), {"human_valid": [(0, 0)]}, ["sha-a"]).directory
    assert a.directory != PackLayout(str(tmp_path), {"human_train": [(0, 0)]}, ["sha-b"]).directory


@pytest.fixture()
def sources(tmp_path):
    write_fasta(str(tmp_path / "h.fa"), make_genome(1, {"chr1": 30_000, "chr2": 20_000, "chr20": 9_000}).items())
    write_fasta(str(tmp_path / "a.fa"), make_genome(2, {"chr1": 25_000, "chr20": 8_000}).items())
    (tmp_path / "s.tsv").write_text("path\tgroup\tassembly\nh.fa\thuman\th\na.fa\tnonhuman\ta\n")
    return tmp_path


def test_crashes_after_packs_moved_and_during_the_redo(sources, monkeypatch, capsys):
    opts = dict(sources=str(sources / "s.tsv"), seq_len=2048, rc_probability=0.5, valid_chroms=["chr20"],
                work_dir=str(sources / "work"), progress=False)
    run_prep(PrepOptions(out=str(sources / "reference"), workers=2, **opts))

    def crash_publishing(built, out):
        raise KeyboardInterrupt("power cut")
    monkeypatch.setattr(prep_module, "publish", crash_publishing)
    with pytest.raises(KeyboardInterrupt):
        run_prep(PrepOptions(out=str(sources / "pack"), workers=2, **opts))
    assert len(list((sources / "work").rglob("*.done"))) == 5, "markers survive, their pack data was moved away"
    monkeypatch.undo()

    cut_record = prep_module.cut_record

    def crash_at_second_source(args):
        if args[0].source == 1:
            raise KeyboardInterrupt("power cut")
        return cut_record(args)
    monkeypatch.setattr(prep_module, "cut_record", crash_at_second_source)
    with pytest.raises(KeyboardInterrupt):
        run_prep(PrepOptions(out=str(sources / "pack"), workers=1, **opts))
    monkeypatch.undo()

    capsys.readouterr()
    run_prep(PrepOptions(out=str(sources / "pack"), workers=2, **opts))
    assert "2 record(s) to cut" in capsys.readouterr().err, "only the second source's records were left"
    for name in ("human_train", "human_valid", "nonhuman_train", "nonhuman_valid"):
        for ext in (".bin", ".idx"):
            assert filecmp.cmp(sources / "reference" / (name + ext), sources / "pack" / (name + ext), shallow=False)
