"""`nucleotron train` end to end on CPU: exact resume (plain stop, SIGTERM, SIGUSR1 to the whole process group),
checkpoint fallback, metrics and W&B offline files, bad-loss handling and input errors."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import warm_python
from train_runs import TINY, checkpoints, losses, make_pack, metrics, run_train, train_command, training_env

REQUEUE = 75
GOLDEN = Path(__file__).parent / "assets" / "golden_losses.json"


def assert_golden(name: str, records) -> None:
    """Exact per-step losses of a tiny CPU run against tests/assets/golden_losses.json. CPU runs are bit-deterministic
    (training_env: no CUDA, one thread), so any numeric drift fails here; a deliberate change to numerics regenerates
    the file (NUCLEOTRON_UPDATE_GOLDEN=1 python -m pytest tests/test_train.py) in the same commit, with the reason."""
    records = [list(r) for r in records]
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("NUCLEOTRON_UPDATE_GOLDEN") == "1":
        import torch

        golden[name] = {"torch": torch.__version__, "losses": records}
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")
        return
    assert name in golden, f"{GOLDEN} has no {name!r}: run with NUCLEOTRON_UPDATE_GOLDEN=1 once"
    assert records == golden[name]["losses"]


def test_straight_run_learns_and_writes_the_run_directory(straight):
    records = metrics(straight)
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 9))
    assert train[-1]["loss"] < train[0]["loss"] - 0.3  # the tiny model learns
    for field in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "consumed_samples", "skipped_steps"):
        assert field in train[0], field
    assert train[-1]["consumed_samples"] == 8 * 4
    assert any(k.startswith("gengram/gate_mean/layer2") for k in train[0])  # tiny.yaml: Gengram in layer 2
    valid = [r for r in records if r["kind"] == "valid"]
    assert [r["step"] for r in valid] == [4, 8]
    for group in ("human", "nonhuman"):
        assert math.isfinite(valid[-1][f"{group}/loss"]) and valid[-1][f"{group}/bits_per_base"] > 0
    # overall = token-weighted mean of the two groups, which hold the same number of tokens
    assert valid[-1]["loss"] == pytest.approx((valid[-1]["human/loss"] + valid[-1]["nonhuman/loss"]) / 2)
    assert valid[-1]["bits_per_base"] > 0
    assert checkpoints(straight) == ["step-00000004", "step-00000008"]
    assert (straight / "checkpoints" / "latest").read_text().strip() == "step-00000008"
    assert "hidden_size: 64" in (straight / "config.yaml").read_text()
    state = json.loads((straight / "checkpoints" / "step-00000008" / "nucleotron.json").read_text())
    assert state["step"] == 8 and state["consumed_samples"] == 32 and state["scheduler"]["num_steps"] == 8


def test_straight_run_matches_the_golden_losses(straight):
    assert_golden("tiny-cpu", losses(straight))


def test_stop_and_resume_is_bit_identical_and_continues_the_wandb_run(pack, straight, tmp_path):
    run_dir = tmp_path / "run"
    wandb = ("logging.wandb=true", "logging.wandb_mode=offline", "logging.wandb_tags=[ci,tiny]")
    run_train(pack, run_dir, "train.stop_at_step=4", *wandb)
    assert checkpoints(run_dir) == ["step-00000004"]
    assert [r["step"] for r in metrics(run_dir) if r["kind"] == "train"] == [1, 2, 3, 4]
    run_id = (run_dir / "wandb-run-id").read_text().strip()
    result = run_train(pack, run_dir, *wandb)
    assert "resumed from" in result.stderr and "at step 4" in result.stderr
    assert losses(run_dir) == losses(straight)
    # W&B: both jobs logged offline into the same run id, which the checkpoint carries
    offline_runs = sorted(p.name for p in (run_dir / "wandb").iterdir() if p.name.startswith("offline-run-"))
    assert len(offline_runs) == 2 and all(name.endswith(run_id) for name in offline_runs)
    state = json.loads((run_dir / "checkpoints" / "step-00000008" / "nucleotron.json").read_text())
    assert state["wandb_run_id"] == run_id
    history = (run_dir / "wandb" / offline_runs[-1] / f"run-{run_id}.wandb").read_bytes()
    assert b"train/loss" in history and b"valid/human/bits_per_base" in history


def _wait_for_step(run_dir, step, process, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, f"training ended early with {process.returncode}"
        if (run_dir / "metrics.jsonl").exists() and any(
                r.get("step", 0) >= step for r in metrics(run_dir) if r["kind"] == "train"):
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def test_sigterm_to_the_process_group_saves_exits_for_requeue_and_resumes_exactly(pack, straight, tmp_path):
    """SIGTERM to the trainer's whole process group mid-run (Slurm signals every process of a step, including any
    checkpoint writer a save has forked): save at the next step boundary, exit 75, resume bit-identically."""
    run_dir = tmp_path / "run"
    process = warm_python.Popen(train_command(pack, run_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True, env=training_env())
    _wait_for_step(run_dir, 2, process)  # early: the signal must land before the last of the 8 steps
    os.killpg(process.pid, signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert process.returncode == REQUEUE, err[-4000:]
    stopped_at = int(checkpoints(run_dir)[-1].split("-")[1])
    assert 2 <= stopped_at < 8, checkpoints(run_dir)
    assert "received SIGTERM" in err and "exiting 75" in err
    run_train(pack, run_dir)
    assert losses(run_dir) == losses(straight)


def test_sigusr1_and_sigterm_request_a_stop():
    from nucleotron.train.signals import PreemptionWatch

    for sig in (signal.SIGUSR1, signal.SIGTERM):
        watch = PreemptionWatch().install()
        try:
            assert not watch.stop_requested()
            os.kill(os.getpid(), sig)
            time.sleep(0.05)
            assert watch.stop_requested() and watch.received == sig
        finally:
            watch.uninstall()


def test_partial_or_truncated_checkpoints_are_skipped(pack, straight, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step-00000008")
    (run_dir / "checkpoints" / "latest").write_text("step-00000004\n")
    # a save that was killed half-way leaves a temporary directory: it must be ignored and removed
    (run_dir / "checkpoints" / ".tmp-step-00000006").mkdir()
    # a newer checkpoint whose data file was truncated: detected, skipped with a warning
    broken = run_dir / "checkpoints" / "step-00000006"
    shutil.copytree(run_dir / "checkpoints" / "step-00000004", broken)
    data_file = next(p for p in broken.iterdir() if p.suffix == ".distcp")
    data_file.write_bytes(data_file.read_bytes()[:100])
    (run_dir / "checkpoints" / "latest").write_text("step-00000006\n")
    result = run_train(pack, run_dir)
    assert f"skipping checkpoint {broken}" in result.stderr and "bytes" in result.stderr
    assert "at step 4" in result.stderr
    assert not (run_dir / "checkpoints" / ".tmp-step-00000006").exists()
    assert losses(run_dir) == losses(straight)


def test_nan_loss_is_skipped_or_stops(pack, tmp_path):
    """A NaN loss at step 3 (injected into the loss) is skipped and counted, or stops the run, by config."""
    inject = (
        "import sys; from nucleotron.train import loss as t; real = t.token_loss\n"
        "calls = [0]\n"
        "def poisoned(*a):\n"
        "    calls[0] += 1\n"
        "    total, count, sums = real(*a)\n"
        "    return (total * float('nan'), count, sums * float('nan')) if calls[0] in (5, 6) "
        "else (total, count, sums)\n"
        "t.token_loss = poisoned\n"
        "from nucleotron.launch.cli import main; sys.exit(main(sys.argv[1:]))\n")
    base = train_command(pack, tmp_path / "skip")[3:]  # drop "python -m nucleotron.launch.cli"
    result = warm_python.run([sys.executable, "-c", inject, *base, "train.max_steps=4", "train.eval_every=100"],
                             capture_output=True, text=True, timeout=600, env=training_env())
    assert result.returncode == 0, result.stderr[-3000:]
    train = [r for r in metrics(tmp_path / "skip") if r["kind"] == "train"]
    assert train[2]["loss"] is None and train[2]["skipped_steps"] == 1 and train[-1]["skipped_steps"] == 1
    assert all(math.isfinite(r["loss"]) for r in train if r["step"] != 3)
    assert "step 3: loss is nan; skipping the update" in result.stderr

    stop = train_command(pack, tmp_path / "stop")[3:] + ["train.bad_loss=stop", "train.max_steps=4", "train.eval_every=100"]
    result = warm_python.run([sys.executable, "-c", inject, *stop], capture_output=True, text=True, timeout=600,
                             env=training_env())
    assert result.returncode == 1
    assert "step 3: loss is nan; stopping (train.bad_loss=stop)" in result.stderr


def test_two_process_tensor_parallel_run_trains_resumes_and_reshards(pack, straight, tmp_path):
    """2 gloo processes (torchrun's rendezvous variables; test_launch_e2e's `launch local` runs torchrun), TP=2:
    stopped at step 4 and resumed to step 6, then resumed by ONE process (TP=1, the checkpoint resharded). It tracks
    the single-process run throughout (same initial weights; only the order of floating-point sums differs), so
    neither resume nor resharding lost model, optimizer, schedule or data position."""
    run_dir = tmp_path / "run"
    for stop in (4, 6):
        command = train_command(pack, run_dir, "parallel.tensor=2", f"train.stop_at_step={stop}")
        result = warm_python.run_ranks(command, 2, timeout=600, env=training_env())
        assert result.returncode == 0, result.stderr[-5000:]
        assert "TP 2" in result.stderr
    assert "at step 4" in result.stderr
    assert_golden("tiny-cpu-tp2", losses(run_dir))   # two TP=2 segments, resumed at 4: a straight TP=2 run's losses
    result = run_train(pack, run_dir)
    assert "at step 6" in result.stderr and "resharded" in result.stderr
    mixed, single = losses(run_dir), losses(straight)
    assert [(kind, step) for kind, step, _ in mixed] == [(kind, step) for kind, step, _ in single]
    for (_, step, a), (_, _, b) in zip(mixed, single):
        assert a == pytest.approx(b, rel=2e-4), step


def test_input_errors_name_the_setting(pack, tmp_path):
    from nucleotron.configs import ConfigError, load_config
    from nucleotron.data_prep.errors import DataPrepError
    from nucleotron.train.trainer import resolve_inputs

    def inputs(*overrides):
        return resolve_inputs(load_config(TINY, [f"data.packs={pack}", *overrides]))

    assert inputs().seq_len == 128  # the pack's, not tiny.yaml's 256
    with pytest.raises(ConfigError, match="data.packs is not set.*nucleotron data prep"):
        inputs("data.packs=null")
    with pytest.raises(DataPrepError, match="manifest.json not found"):
        inputs(f"data.packs={tmp_path}")
    with pytest.raises(ConfigError, match="model.vocab_size=8 is too small"):
        inputs("model.vocab_size=8")


def test_soft_masked_pack_trains_like_the_plain_pack_and_weights_its_repeats(pack, straight, tmp_path):
    """With weight 1 the soft-mask bit is stripped before the model (same losses as the plain pack, bit for bit);
    with 0.1 the gradient changes while the reported loss stays the plain mean (at step 1, before any update, the
    same as the plain run's)."""
    from nucleotron.configs import ConfigError, load_config
    from nucleotron.train.trainer import resolve_inputs

    soft = make_pack(tmp_path / "soft-data", soft_mask=True)
    run_train(soft, tmp_path / "same")
    assert losses(tmp_path / "same") == losses(straight)
    run_train(soft, tmp_path / "weighted", "data.soft_masked_loss_weight=0.1")
    weighted = [r for r in metrics(tmp_path / "weighted") if r["kind"] == "train"]
    plain = [r for r in metrics(straight) if r["kind"] == "train"]
    assert weighted[0]["loss"] == plain[0]["loss"]
    assert all(w["grad_norm"] != p["grad_norm"] for w, p in zip(weighted, plain))
    assert all(w["loss"] != p["loss"] for w, p in zip(weighted[2:], plain[2:]))   # step 1 has lr 0 (warmup)
    with pytest.raises(ConfigError, match="soft_masked_loss_weight=0.1 needs soft-mask bits.*--soft-mask"):
        resolve_inputs(load_config(TINY, [f"data.packs={pack}", "data.soft_masked_loss_weight=0.1"]))


def test_bad_setting_exits_2_naming_it(pack, tmp_path):
    result = run_train(pack, tmp_path / "d", "train.bad_loss=maybe", expect=2)
    assert "train.bad_loss" in result.stderr and "skip" in result.stderr


def test_resuming_with_another_model_is_refused(straight):
    from nucleotron.configs import ConfigError, load_config
    from nucleotron.train.run_dir import check_resume_config

    saved = (straight / "config.yaml").read_text()
    check_resume_config(saved, load_config(TINY, ["train.max_steps=10", "model.recompute=full"]), "ckpt")
    with pytest.raises(ConfigError, match="model.gengram.window: checkpoint 21, config 15.*new run.dir"):
        check_resume_config(saved, load_config(TINY, ["model.gengram.window=15"]), "ckpt")
