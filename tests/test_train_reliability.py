"""Nothing lost, nothing executed: checkpoints and run directories that survive corruption, races, NaNs and
hostile files; plus the trainer's own regressions (no second validation record when a finished run is re-run,
checks on the config as resolved against the pack). Tiny CPU runs; each repaired run must match the straight one."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import warm_python
from train_runs import TINY, checkpoints, losses, metrics, run_train, train_command, training_env


def copy_run(straight: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    return run


def rehash(checkpoint: Path) -> None:
    """Rewrite a checkpoint's recorded checksums to match its (tampered) files, as an attacker could."""
    record = json.loads((checkpoint / "nucleotron.json").read_text())
    record["files"] = {}
    for path in sorted(checkpoint.rglob("*")):
        rel = str(path.relative_to(checkpoint))
        if path.is_file() and rel != "nucleotron.json":
            record["files"][rel] = {"size": path.stat().st_size,
                                    "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    (checkpoint / "nucleotron.json").write_text(json.dumps(record))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def latest(run: Path) -> str:
    return (run / "checkpoints" / "latest").read_text().strip()


# ------------------------------------------------------------------ trainer regressions (issue 12)


def test_rerunning_a_finished_run_logs_nothing_twice(pack, straight, tmp_path):
    run = copy_run(straight, tmp_path)
    before = (run / "metrics.jsonl").read_text()
    result = run_train(pack, run)
    assert "resumed from" in result.stderr and "at step 8" in result.stderr
    assert (run / "metrics.jsonl").read_text() == before


def test_the_config_is_checked_again_after_it_follows_the_pack(pack):
    from nucleotron.configs import ConfigError, load_config
    from nucleotron.train.run_dir import resolve_inputs

    # tiny-cpu.yaml's 256 positions / TP 2 cover the conv's reach of 3 x 30; the pack's 128 do not
    cfg = load_config(TINY, [f"data.packs={pack}", "parallel.tensor=2", "parallel.sequence_parallel=true",
                             "model.gengram.conv_dilation=30"])
    with pytest.raises(ConfigError, match=r"data.seq_len=128 / parallel.tensor=2 leaves fewer positions"):
        resolve_inputs(cfg)


# ------------------------------------------------------------------ untrusted and corrupt checkpoints


def test_a_hostile_checkpoint_cannot_run_code(pack, straight, tmp_path):
    run = copy_run(straight, tmp_path)
    target = run / "checkpoints" / "step-00000008"
    marker = tmp_path / "code-ran"
    (target / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    (target / "rng" / "rank0.pt").write_bytes(pickle.dumps(_Payload(marker)))  # the old pickled RNG file name
    rehash(target)
    result = run_train(pack, run, expect=2)
    assert not marker.exists()
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"nucleotron train: {target}/.metadata asks to load posix.system, which is not "
                                f"checkpoint metadata")


def test_verify_finds_same_size_corruption_in_any_file(straight, tmp_path):
    from nucleotron.train.checkpoint import verify

    run = copy_run(straight, tmp_path)
    target = run / "checkpoints" / "step-00000008"
    assert verify(str(target)) is None
    for rel in ("rng/rank0.safetensors", ".metadata", "common.pt"):
        path = target / rel
        original = path.read_bytes()
        damaged = bytearray(original)
        damaged[len(damaged) // 2] ^= 0xFF
        path.write_bytes(bytes(damaged))
        assert verify(str(target)) == f"{rel} does not match the checksum written with it (its content changed)"
        path.write_bytes(original)
    (target / "nucleotron.json").write_text("{")
    assert "missing or unreadable" in verify(str(target))


def test_corrupt_newest_checkpoint_falls_back_and_retention_keeps_the_good_one(pack, straight, tmp_path):
    """Random bytes in a shard (size unchanged): detected, moved aside, the run resumes from step 4 and its new
    step-8 save survives pruning with checkpoint.keep=1 (the old rule kept the highest numbers: the bad one)."""
    run = copy_run(straight, tmp_path)
    bad = run / "checkpoints" / "step-00000008"
    shard = sorted(bad.glob("*.distcp"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = os.urandom(64)
    shard.write_bytes(bytes(data))
    result = run_train(pack, run, "checkpoint.keep=1")
    assert f"skipping checkpoint {bad}: {shard.name} does not match the checksum" in result.stderr
    assert "at step 4" in result.stderr
    assert losses(run) == losses(straight)
    assert checkpoints(run) == ["step-00000008"] and latest(run) == "step-00000008"
    rejected = list((run / "checkpoints" / "rejected").iterdir())
    assert len(rejected) == 1 and "checksum" in (rejected[0] / "REJECTED.txt").read_text()


def test_no_usable_checkpoint_refuses_a_silent_restart(pack, straight, tmp_path):
    run = copy_run(straight, tmp_path)
    for name in checkpoints(run):
        shard = sorted((run / "checkpoints" / name).glob("*.distcp"))[0]
        shard.write_bytes(shard.read_bytes()[:100])
    before = (run / "metrics.jsonl").read_text()
    result = run_train(pack, run, expect=2)
    assert "holds no usable checkpoint" in result.stderr and "checkpoint.allow_restart=true" in result.stderr
    assert (run / "metrics.jsonl").read_text() == before
    result = run_train(pack, run, expect=2)   # the unusable ones were moved aside: still refused
    assert "holds no usable checkpoint" in result.stderr
    result = run_train(pack, run, "checkpoint.allow_restart=true", "train.stop_at_step=1")
    assert "STARTING OVER FROM STEP 0" in result.stderr
    assert [r["step"] for r in metrics(run)] == [1]


# ------------------------------------------------------------------ NaN forever


def _injected(body: str, pack, run_dir, *overrides):
    script = ("import sys, math, torch\n" + body +
              "from nucleotron.launch.cli import main; sys.exit(main(sys.argv[1:]))\n")
    return warm_python.run([sys.executable, "-c", script, *train_command(pack, run_dir, *overrides)[3:]],
                           capture_output=True, text=True, timeout=600, env=training_env())


def test_non_finite_weights_stop_the_run_and_are_never_saved(pack, tmp_path):
    poison = ("from nucleotron.train.engines import megatron as m\n"
              "real = m.MegatronEngine.optimizer_step\n"
              "calls = [0]\n"
              "def poisoned(self):\n"
              "    calls[0] += 1\n"
              "    updated, norm = real(self)\n"
              "    if calls[0] == 3:\n"
              "        next(self.model.parameters()).data.fill_(float('nan'))\n"
              "        return updated, float('nan')\n"
              "    return updated, norm\n"
              "m.MegatronEngine.optimizer_step = poisoned\n")
    result = _injected(poison, pack, tmp_path / "run", "checkpoint.every=2")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "step 3: the model's weights are no longer finite" in result.stderr
    assert checkpoints(tmp_path / "run") == ["step-00000002"] and latest(tmp_path / "run") == "step-00000002"


def test_a_run_that_skips_step_after_step_stops(pack, tmp_path):
    nan_loss = ("from nucleotron.train import loss as t\n"
                "real = t.token_loss\n"
                "def poisoned(*a):\n"
                "    total, count, sums = real(*a)\n"
                "    return total * float('nan'), count, sums * float('nan')\n"
                "t.token_loss = poisoned\n")
    result = _injected(nan_loss, pack, tmp_path / "run", "train.max_consecutive_skips=3")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "step 3: 3 consecutive steps skipped (train.max_consecutive_skips=3)" in result.stderr
    assert checkpoints(tmp_path / "run") == []


def test_infinite_learning_rate_is_refused_at_load(pack, tmp_path):
    for value in ("inf", "nan"):
        result = run_train(pack, tmp_path / value, f"optim.lr={value}", expect=2)
        assert "optim.lr" in result.stderr
        assert not (tmp_path / value).exists()


# ------------------------------------------------------------------ one trainer per run directory


def test_two_trainers_cannot_share_a_run_directory(pack, tmp_path):
    run = tmp_path / "run"
    first = warm_python.Popen(train_command(pack, run, "train.max_steps=400", "checkpoint.every=400"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                              env=training_env())
    try:
        deadline = time.time() + 300
        while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().strip()):
            assert first.poll() is None and time.time() < deadline, "the first trainer did not start"
            time.sleep(0.1)
        second = run_train(pack, run, expect=2)
        assert f"is in use by another trainer (PID {first.pid} on host {socket.gethostname()}" in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        first.communicate(timeout=300)
    assert first.returncode == 75
    assert not (run / "train.lock").exists()


def test_run_lock_takes_over_only_from_a_dead_holder_or_the_same_slurm_job(tmp_path, monkeypatch):
    from nucleotron.configs import ConfigError
    from nucleotron.train.run_lock import RunLock

    lock_file = tmp_path / "train.lock"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_file.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": 0.0}))
    lock = RunLock(str(tmp_path)).acquire()          # dead PID on this host: stale
    assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    with pytest.raises(ConfigError, match=f"in use by another trainer \\(PID {os.getpid()}"):
        RunLock(str(tmp_path)).acquire()             # a live holder (this very process)
    lock.release()
    assert not lock_file.exists()
    lock_file.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": 0.0, "slurm_job_id": "77"}))
    with pytest.raises(ConfigError, match="PID 1 on host elsewhere, Slurm job 77"):
        RunLock(str(tmp_path)).acquire()             # another host: cannot be checked, refused
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    RunLock(str(tmp_path)).acquire().release()       # the same Slurm job, requeued


# ------------------------------------------------------------------ no helper processes to orphan


def test_training_and_checkpointing_spawn_no_helper_process(pack, tmp_path):
    """A run that saves checkpoints starts no spawned Python helper (megatron's checkpoint writer would start a
    multiprocessing Manager per rank: seconds of start-up each, and left running when the trainer is killed), and
    each save goes into an empty folder (megatron warns of an "old incomplete checkpoint" otherwise)."""
    spy = ("import multiprocessing.context as c\n"
           "def refuse(process):\n"
           "    raise RuntimeError(f'the trainer spawned a helper process: {process.name}')\n"
           "c.SpawnProcess._Popen = staticmethod(refuse)\n")
    result = _injected(spy, pack, tmp_path / "run", "train.max_steps=4", "checkpoint.every=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert checkpoints(tmp_path / "run") == ["step-00000002", "step-00000004"]
    assert "Overwriting old incomplete" not in result.stderr  # megatron's warning when it saves into a used folder


# ------------------------------------------------------------------ settings a resume would ignore


def test_a_changed_schedule_is_refused_or_applied_deliberately(pack, straight, tmp_path):
    run = tmp_path / "run"
    run_train(pack, run, "train.stop_at_step=4")
    recorded = (run / "config.yaml").read_text()
    result = run_train(pack, run, "optim.lr=0.0007", "train.max_steps=10", expect=2)
    assert "optim.lr: checkpoint" in result.stderr and "config 0.0007" in result.stderr
    assert "train.max_steps: checkpoint 8, config 10" in result.stderr
    assert "checkpoint.override_schedule=true" in result.stderr
    assert (run / "config.yaml").read_text() == recorded
    result = run_train(pack, run, "optim.lr=0.0007", "checkpoint.override_schedule=true")
    assert "applying the config's schedule" in result.stderr
    assert "lr: 0.0007" in (run / "config.yaml").read_text()
    mine = {r["step"]: r for r in metrics(run) if r["kind"] == "train"}
    theirs = {r["step"]: r for r in metrics(straight) if r["kind"] == "train"}
    assert mine[4]["loss"] == theirs[4]["loss"] and mine[5]["lr"] < theirs[5]["lr"]


# ------------------------------------------------------------------ disk full during a save


def test_disk_full_during_a_save_is_one_line_and_keeps_the_last_checkpoint(pack, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=9m", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        run = mount / "run"
        result = run_train(pack, run, expect=2)
        assert "could not write checkpoint step-00000008" in result.stderr
        assert "no space left on the device" in result.stderr and "Traceback" not in result.stderr
        assert latest(run) == "step-00000004" and checkpoints(run) == ["step-00000004"]
        from nucleotron.train.checkpoint import verify

        assert verify(str(run / "checkpoints" / "step-00000004")) is None
        assert not list((run / "checkpoints").glob(".tmp-*"))
    finally:
        subprocess.run(["umount", str(mount)])


# ------------------------------------------------------------------ packs are checked before training


def test_training_refuses_a_pack_whose_bin_was_overwritten(pack, tmp_path):
    from nucleotron.configs import load_config
    from nucleotron.data_prep.errors import DataPrepError
    from nucleotron.train.run_dir import resolve_inputs

    copy = tmp_path / "pack"
    shutil.copytree(pack, copy)
    target = sorted(copy.rglob("*.bin"))[0]
    target.write_bytes(bytes(len(target.read_bytes())))   # same size, not DNA
    with pytest.raises(DataPrepError, match=target.name):
        resolve_inputs(load_config(TINY, [f"data.packs={copy}"]))
