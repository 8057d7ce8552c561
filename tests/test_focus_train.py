"""`nucleotron focus train`: a FOCUS adapter trained on a frozen checkpoint through the training loop (engine
train/engines/focus.py), and the functional claim of issue 19 on a synthetic long-range task."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from train_runs import FAST, REPO, losses, metrics, training_env

FOCUS_YAML = str(REPO / "configs" / "experiments" / "focus-tiny.yaml")
SMALL_BATCH = ["train.micro_batch_size=2", "train.global_batch_size=4"]


@pytest.fixture(autouse=True)
def restore_environment():
    """In-process megatron state sets RANK, WORLD_SIZE, MASTER_PORT ... and torch's thread count: undo both."""
    env, threads = dict(os.environ), torch.get_num_threads()
    yield
    os.environ.clear()
    os.environ.update(env)
    torch.set_num_threads(threads)


def focus_train(pack, base, run_dir, *overrides, expect=0):
    command = [sys.executable, "-m", "nucleotron.launch.cli", "focus", "train", "--checkpoint", str(base), "--config",
               FOCUS_YAML, f"data.packs={pack}", f"run.dir={run_dir}", *FAST, *SMALL_BATCH, *overrides]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=training_env())
    assert result.returncode == expect, (f"exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n"
                                         f"{result.stderr[-5000:]}")
    return result


@pytest.fixture(scope="module")
def focus_run(pack, straight, tmp_path_factory):
    """8 adapter steps on the frozen 8-step tiny run, validation and a checkpoint every 4."""
    run_dir = tmp_path_factory.mktemp("focus") / "run"
    focus_train(pack, straight, run_dir)
    return run_dir


def test_focus_train_runs_the_loop_and_writes_only_the_adapter(focus_run, straight):
    from safetensors import safe_open

    from nucleotron.infer.focus_io import adapter_base
    from nucleotron.train.checkpoint import find_resumable

    records = metrics(focus_run)
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 9))
    assert [r["step"] for r in records if r["kind"] == "valid"] == [4, 8]
    assert all(r["loss"] > 0 and r["focus/kl"] >= 0 for r in records if r["kind"] == "train")
    step8 = focus_run / "checkpoints" / "step-00000008"
    files = sorted(str(p.relative_to(step8)) for p in step8.rglob("*") if p.is_file())
    assert files == ["focus/adapter.safetensors", "focus/optimizer.safetensors", "nucleotron.json",
                     "rng/rank0.safetensors"], "no backbone tensors in an adapter checkpoint"
    with safe_open(str(step8 / "focus" / "adapter.safetensors"), "pt") as handle:
        names = list(handle.keys())
        trained = {name: handle.get_tensor(name) for name in names}
    assert names and all(n.startswith(("summary_embedding", "qkv_adapters.", "proj_adapters.")) for n in names)
    base_dir, _ = find_resumable(str(straight / "checkpoints"), reject=False)
    base = adapter_base(str(step8 / "focus" / "adapter.safetensors"))
    assert base["path"] == base_dir and len(base["sha256"]) == 64 and base["step"] == 8
    with safe_open(str(focus_run / "checkpoints" / "step-00000004" / "focus" / "adapter.safetensors"), "pt") as handle:
        assert any(not torch.equal(handle.get_tensor(n), trained[n]) for n in names), "the adapter trains"
    recorded = (focus_run / "config.yaml").read_text()
    assert f"base_checkpoint: {base_dir}" in recorded   # a requeued `nucleotron train` on it picks the same engine
    saved_model = (straight / "config.yaml").read_text().split("model:")[1].split("\nparallel:")[0]
    assert saved_model.replace("attention_backend: auto", "") in recorded.replace("attention_backend: auto", "")


def test_stopped_and_resumed_focus_run_equals_the_straight_one(pack, straight, focus_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(focus_run, run)
    shutil.rmtree(run / "checkpoints" / "step-00000008")
    (run / "checkpoints" / "latest").write_text("step-00000004\n")
    result = focus_train(pack, straight, run)
    assert "resumed from" in result.stderr and "at step 4" in result.stderr
    assert losses(run) == losses(focus_run)
    adapter = os.path.join("checkpoints", "step-00000008", "focus", "adapter.safetensors")
    assert (run / adapter).read_bytes() == (focus_run / adapter).read_bytes()


def test_focus_score_reads_the_run_directory(focus_run, straight, tmp_path, capsys):
    from nucleotron.infer.focus_cli import main

    (tmp_path / "seqs.fa").write_text(">s\n" + "ACGTTGCAAC" * 15 + "\n")
    assert main(["score", str(straight), "--adapter", str(focus_run), "--sequences", str(tmp_path / "seqs.fa"),
                 "--out", str(tmp_path / "scores.tsv")]) == 0
    header, row = (tmp_path / "scores.tsv").read_text().splitlines()
    assert row.split("\t")[:2] == ["s", "150"] and float(row.split("\t")[2]) < 0


def test_engine_trains_only_the_adapter_through_ddp(pack, straight):
    from torch.nn.parallel import DistributedDataParallel

    from nucleotron.configs import load_config
    from nucleotron.train.engine import build_engine
    from nucleotron.train.run_dir import resolve_inputs

    cfg = load_config(FOCUS_YAML, [f"data.packs={pack}", f"focus.base_checkpoint={straight}", "optim.lr=1e-2",
                                   "schedule.warmup_fraction=0", *SMALL_BATCH])
    manifest = resolve_inputs(cfg)
    engine = build_engine(cfg)
    assert engine.name == "focus"
    engine.init_distributed()
    try:
        engine.build(manifest, total_steps=4)
        model = engine.model
        assert isinstance(engine.ddp, DistributedDataParallel)
        frozen = {name: p.detach().clone() for name, p in model.base.named_parameters()}
        assert frozen and not any(p.requires_grad for p in model.base.parameters())
        adapter = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
        in_optimizer = {id(p) for group in engine.optimizer.param_groups for p in group["params"]}
        assert in_optimizer == {id(p) for p in model.trainable_parameters()}
        assert {f"focus.base.{name}" for name in frozen} <= set(engine.ddp.parameters_to_ignore)
        generator = torch.Generator().manual_seed(0)
        bases = torch.tensor([8, 5, 6, 7])[torch.randint(0, 4, (2, manifest.seq_len + 1), generator=generator)]
        batch = {"tokens": bases[:, :-1], "labels": bases[:, 1:], "loss_mask": torch.ones(2, manifest.seq_len),
                 "position_ids": torch.arange(manifest.seq_len).expand(2, -1)}
        for _ in range(2):
            sums = engine.forward_backward(iter([batch, batch]), 2)
            assert sums.tokens == 2 * 2 * manifest.seq_len and sums.mean_loss > 0
            assert all(p.grad is None for p in model.base.parameters())
            assert engine.optimizer_step()[0]
        for name, p in model.base.named_parameters():
            assert torch.equal(p, frozen[name]), f"backbone {name} changed"
        changed = [name for name, p in model.named_parameters() if p.requires_grad and not torch.equal(p, adapter[name])]
        assert sorted(changed) == sorted(adapter), "every adapter tensor trains"
        assert engine.statistics()["focus/kl"] > 0
    finally:
        engine.shutdown()


def test_bad_focus_train_inputs_fail_with_a_message_naming_them(pack, straight, tmp_path, capsys):
    from nucleotron.configs import ConfigError, load_config
    from nucleotron.data_prep.manifest import load_manifest
    from nucleotron.infer.focus_cli import main
    from nucleotron.train.engines.focus import FocusEngine

    missing = tmp_path / "no-such-run"
    assert main(["train", "--checkpoint", str(missing), "--config", FOCUS_YAML]) == 2
    err = capsys.readouterr().err
    assert f"focus.base_checkpoint={missing}" in err and "no complete checkpoint found" in err
    hnet = tmp_path / "hnet-ckpt"
    hnet.mkdir()
    (hnet / "nucleotron.json").write_text(json.dumps({"format_version": 2, "step": 3,
                                                      "config_yaml": "model:\n  arch: hnet\n"}))
    assert main(["train", "--checkpoint", str(hnet), "--config", FOCUS_YAML]) == 2
    assert f"{hnet}) holds a model.arch='hnet' model; FOCUS adapts" in capsys.readouterr().err
    assert main(["train", "--checkpoint", str(straight), "--config", FOCUS_YAML, "focus.base_checkpoint=x"]) == 2
    assert "pass the frozen checkpoint as --checkpoint" in capsys.readouterr().err

    with pytest.raises(ConfigError, match=r"the model of a FOCUS run is the frozen checkpoint's .*model.num_layers: "
                                          r"checkpoint 4, config 3"):
        FocusEngine(load_config(FOCUS_YAML, [f"focus.base_checkpoint={straight}", "model.num_layers=3"]))
    with pytest.raises(ConfigError, match="FOCUS training is data-parallel only"):
        FocusEngine(load_config(FOCUS_YAML, [f"focus.base_checkpoint={straight}", "parallel.tensor=2"]))
    engine = FocusEngine(load_config(FOCUS_YAML, [f"focus.base_checkpoint={straight}", "focus.window=128"]))
    with pytest.raises(ConfigError, match="focus.window=128 is not below the pack's sequence length 128"):
        engine._check_lengths(load_manifest(str(pack)))
