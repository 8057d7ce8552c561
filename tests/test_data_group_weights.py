"""`data prep --group-weights`: any group names with declared token shares (dnaHNet's one prokaryote group, three
groups at 0.5/0.3/0.2); the shares megatron's blend realises match them; bad declarations are refused by name before
any work; the default 1:1 human:non-human pack is unchanged."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from nucleotron.data_prep.cli import main as data_main
from nucleotron.data_prep.manifest import load_manifest
from nucleotron.data_prep.stats import format_stats, pack_stats
from nucleotron.data_prep.synthetic import make_genome, write_fasta

# Unequal on-disk sizes, so only the blend weights can produce the declared shares.
SIZES = {"bacteria": 24_000, "archaea": 9_000, "phage": 5_000}


def prep(root, sources, *extra, out="pack"):
    return data_main(["prep", "--sources", str(root / sources), "--seq-len", "128", "--min-len", "64",
                      "--out", str(root / out), "--no-progress", "--workers", "1", *extra])


@pytest.fixture(scope="module")
def genomes(tmp_path_factory):
    root = tmp_path_factory.mktemp("groups")
    for seed, (name, size) in enumerate(SIZES.items()):
        write_fasta(str(root / f"{name}.fa"), make_genome(seed, {"chr1": size, "chr20": size // 3},
                                                           gap_len=(100, 300)).items())
    rows = "".join(f"{name}.fa\t{name}\t{name}-asm\n" for name in SIZES)
    (root / "three.tsv").write_text("path\tgroup\tassembly\n" + rows)
    (root / "one.tsv").write_text("path\tgroup\tassembly\n" + "".join(
        f"{name}.fa\tprokaryote\t{name}-asm\n" for name in SIZES))
    (root / "two.tsv").write_text("path\tgroup\tassembly\nbacteria.fa\thuman\th\narchaea.fa\tnonhuman\tp\n")
    return root


def realised_shares(pack, tmp_path, samples=4000):
    """Each group's share of the samples megatron's blended training dataset draws (what training reads)."""
    import torch.distributed as dist

    from nucleotron.train.data import build_train_dataset

    manifest = load_manifest(str(pack))
    # megatron's blend asks for the rank: one gloo process, over a file store (no port)
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        dataset = build_train_dataset(manifest, samples, seed=1, cache_dir=str(tmp_path / "cache"))
    finally:
        dist.destroy_process_group()
    groups = manifest.blend["train"].groups
    if not hasattr(dataset, "dataset_index"):        # one dataset: megatron reads it without a blend
        assert len(groups) == 1 and len(dataset) >= samples
        return {groups[0]: 1.0}
    counts = np.bincount(np.asarray(dataset.dataset_index), minlength=len(groups))
    return {g: counts[i] / counts.sum() for i, g in enumerate(groups)}


@pytest.fixture(scope="module")
def three(genomes):
    assert prep(genomes, "three.tsv", "--group-weights", "bacteria=5,archaea=3,phage=2", "--valid-chroms",
                "chr20", out="three") == 0
    return genomes / "three"


def test_three_groups_get_their_declared_shares(genomes, three, tmp_path):
    manifest = load_manifest(str(genomes / "three"))
    assert manifest.groups == ["bacteria", "archaea", "phage"]
    assert manifest.group_weights == {"bacteria": 0.5, "archaea": 0.3, "phage": 0.2}
    assert manifest.raw["group_weights"] == {"bacteria": 0.5, "archaea": 0.3, "phage": 0.2}
    for split in ("train", "valid"):
        blend = manifest.blend[split]
        assert blend.expected_token_share == pytest.approx({"bacteria": 0.5, "archaea": 0.3, "phage": 0.2})
        assert math.fsum(blend.weights) == pytest.approx(1.0)
    disk = manifest.blend["train"].on_disk_tokens
    assert disk["bacteria"] > 2 * disk["archaea"] > 2 * disk["phage"]      # far from 5:3:2 on disk
    shares = realised_shares(genomes / "three", tmp_path)
    assert shares == pytest.approx({"bacteria": 0.5, "archaea": 0.3, "phage": 0.2}, abs=0.01)
    stats = pack_stats(str(genomes / "three"))
    assert stats["mix"]["train"]["verified"] and stats["mix"]["valid"]["declared_share"]["phage"] == 0.2
    assert "phage 0.2000 (verified against the declared group weights)" in format_stats(stats)


def test_stats_refuse_a_blend_that_does_not_give_the_declared_shares(three, tmp_path):
    from nucleotron.data_prep.errors import DataPrepError

    copy = tmp_path / "pack"
    shutil.copytree(three, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["group_weights"] = {"bacteria": 0.6, "archaea": 0.2, "phage": 0.2}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataPrepError, match=r"blend 'train': group 'bacteria' gets a token share of 0.500000000 "
                                            r"under the blend but its declared weight is 0.600000000"):
        pack_stats(str(copy))
    manifest["group_weights"] = {"bacteria": 1.0, "archaea": 0.0, "phage": 0.0}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataPrepError, match="malformed manifest .*group_weights"):
        load_manifest(str(copy))


def test_one_prokaryote_group(genomes, tmp_path):
    assert prep(genomes, "one.tsv", "--group-weights", "prokaryote=1", "--valid-chroms", "chr20", out="one") == 0
    manifest = load_manifest(str(genomes / "one"))
    assert manifest.groups == ["prokaryote"] and manifest.group_weights == {"prokaryote": 1.0}
    assert manifest.blend["train"].weights == [1.0] and manifest.blend["valid"].prefixes == ["prokaryote_valid"]
    assert realised_shares(genomes / "one", tmp_path, samples=500) == {"prokaryote": 1.0}
    assert pack_stats(str(genomes / "one"))["mix"]["train"]["blend_share"] == {"prokaryote": 1.0}


def test_default_pack_is_unchanged(genomes):
    """No --group-weights: the 1:1 human:nonhuman blend with the original formula and sentence, no group_weights
    key (so the manifest is byte-identical to earlier versions'); declaring the same 1:1 mix changes only that key."""
    assert prep(genomes, "two.tsv", out="default") == 0
    assert prep(genomes, "two.tsv", "--group-weights", "human=1,nonhuman=1", out="declared") == 0
    default = json.loads((genomes / "default" / "manifest.json").read_text())
    declared = json.loads((genomes / "declared" / "manifest.json").read_text())
    assert "group_weights" not in default and declared.pop("group_weights") == {"human": 0.5, "nonhuman": 0.5}
    assert declared == default
    blend = default["blend"]["train"]
    tokens = blend["on_disk_tokens"]
    assert blend["weights"] == [0.5 * tokens["human"] / tokens["human"], 0.5 * tokens["nonhuman"] / tokens["nonhuman"]]
    assert blend["statement"].startswith("expected human:non-human token ratio 1.000000:1 under the blend; on disk ")
    assert load_manifest(str(genomes / "default")).group_weights == {"human": 0.5, "nonhuman": 0.5}
    mix = pack_stats(str(genomes / "default"))["mix"]["train"]
    assert mix["blend_human_share"] == 0.5 and mix["on_disk_human_share"] == pytest.approx(
        tokens["human"] / (tokens["human"] + tokens["nonhuman"]))


@pytest.mark.parametrize("weights, sources, message", [
    ("bacteria=1,archaea=1", "three.tsv", "three.tsv line 4: column 'group' has unknown group 'phage'; the groups "
                                          "are bacteria, archaea (from --group-weights)"),
    ("bacteria=1,archaea=1,phage=1,virus=1", "three.tsv", "--group-weights names group 'virus' but no row of"),
    (None, "three.tsv", "three.tsv line 2: column 'group' has unknown group 'bacteria'; the groups are human, "
                        "nonhuman (the default 1:1 mix); declare other groups"),
    ("bacteria=1,archaea=0,phage=1", "three.tsv", "weight 0.0 of group 'archaea' must be a finite number > 0"),
    ("bacteria=1,archaea=-2,phage=1", "three.tsv", "weight -2.0 of group 'archaea' must be a finite number > 0"),
    ("bacteria=nan,archaea=1,phage=1", "three.tsv", "weight nan of group 'bacteria' must be a finite number > 0"),
    ("bacteria=inf,archaea=1,phage=1", "three.tsv", "weight inf of group 'bacteria' must be a finite number > 0"),
    ("bacteria=1e308,archaea=1e308,phage=1", "three.tsv", "the weights sum to inf"),
    ("bacteria=x,archaea=1,phage=1", "three.tsv", "weight 'x' of group 'bacteria' is not a number"),
    ("bacteria,archaea=1", "three.tsv", "entry 'bacteria' is not NAME=WEIGHT"),
    ("bacteria=1,bacteria=2", "three.tsv", "group 'bacteria' is given twice"),
    (",", "three.tsv", "names no group"),
    ("../x=1", "three.tsv", "group name '../x' is not allowed"),
])
def test_bad_declarations_are_refused_before_any_work(genomes, capsys, weights, sources, message):
    capsys.readouterr()
    extra = [] if weights is None else ["--group-weights", weights]
    assert prep(genomes, sources, *extra, out="bad") == 1
    err = capsys.readouterr().err
    assert message in err, err
    assert not (genomes / "bad").exists() and not (genomes / "bad.work").exists()


def test_a_group_without_tokens_in_a_split_is_named(genomes, capsys):
    """phage's genome has no chr7: the valid split cannot give it its share."""
    capsys.readouterr()
    assert prep(genomes, "three.tsv", "--group-weights", "bacteria=5,archaea=3,phage=2", "--valid-chroms", "chr7",
                out="bad") == 1
    err = capsys.readouterr().err
    assert ("split 'valid' (['7']) has no bacteria tokens after filtering, so the declared mix (--group-weights "
            "bacteria=0.5, archaea=0.3, phage=0.2) is impossible") in err, err
    assert not (genomes / "bad").exists()
