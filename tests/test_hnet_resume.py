"""dnaHNet through `nucleotron train` (the shared loop, DeepSpeed engine): a run stopped by train.stop_at_step, then
SIGTERMed mid-run (exit 75 for requeue, after a verified checkpoint), then finished, is bit-identical to a straight
run: every per-step train loss and every validation loss equal with ==, the same data position at every step and
the same RNG states in the last checkpoint.

The tiny model draws no random numbers while it trains, so equal losses alone would not show that RNG states are
restored rather than re-seeded. These runs therefore add noise to the training logits (as dropout would) drawn from
torch, NumPy and Python's `random` every forward: a generator left at its re-seeded state changes the losses."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import warm_python
from train_runs import FAST, REPO, checkpoints, losses, metrics, training_env

HNET = str(REPO / "configs" / "models" / "dnahnet-tiny.yaml")
REQUEUE = 75

# `nucleotron train` with every training forward of HNetLM drawing from the three global generators.
NOISY_TRAIN = """\
import random, sys
import numpy as np
import torch
from nucleotron.model.hnet import model as hnet

forward = hnet.HNetLM.forward

def noisy(self, tokens, mask=None):
    out = forward(self, tokens, mask)
    if self.training:
        scale = 0.05 * (1 + random.random() + float(np.random.rand()))
        out.logits = out.logits + scale * torch.randn(out.logits.shape[-1], device=out.logits.device)
    return out

hnet.HNetLM.forward = noisy
from nucleotron.launch.cli import main
sys.exit(main(sys.argv[1:]))
"""


def command(pack: Path, run_dir: Path, *overrides: str):
    return [sys.executable, "-c", NOISY_TRAIN, "train", "--config", HNET, f"data.packs={pack}",
            f"run.dir={run_dir}", *FAST, *overrides]


def run(pack: Path, run_dir: Path, *overrides: str, expect: int = 0) -> subprocess.CompletedProcess:
    result = warm_python.run(command(pack, run_dir, *overrides), capture_output=True, text=True, timeout=600,
                             env=training_env())
    assert result.returncode == expect, f"exit {result.returncode}, expected {expect}\n{result.stderr[-5000:]}"
    return result


def wait_for_step(run_dir: Path, step: int, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, f"training ended early with {process.returncode}"
        try:
            if any(r["kind"] == "train" and r["step"] >= step for r in metrics(run_dir)):
                return
        except (OSError, ValueError):  # not written yet, or a line caught half-written
            pass
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def validation(run_dir: Path):
    """Every validation number (overall and per group: loss, bits per base) by step."""
    return [(r["step"], {k: v for k, v in r.items() if k.endswith(("loss", "bits_per_base"))})
            for r in metrics(run_dir) if r["kind"] == "valid"]


@pytest.fixture(scope="module")
def hnet_straight(pack, tmp_path_factory):
    """The uninterrupted 8-step noisy dnaHNet run (ZeRO-1, one process) the interrupted one must reproduce."""
    run_dir = tmp_path_factory.mktemp("hnet-straight") / "run"
    run(pack, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def hnet_chain(pack, tmp_path_factory):
    """One run in three jobs: stopped at step 3 (train.stop_at_step), resumed and SIGTERMed to its whole process
    group after the step-4 checkpoint (as Slurm signals a job step), resumed again to the end."""
    run_dir = tmp_path_factory.mktemp("hnet-chain") / "run"
    jobs = {"stop": run(pack, run_dir, "train.stop_at_step=3")}
    jobs["stop_checkpoints"] = checkpoints(run_dir)
    process = warm_python.Popen(command(pack, run_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, env=training_env())
    try:
        wait_for_step(run_dir, 5, process)
        os.killpg(process.pid, signal.SIGTERM)
        _, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    jobs["sigterm"] = subprocess.CompletedProcess(process.args, process.returncode, "", err)
    jobs["sigterm_checkpoints"] = checkpoints(run_dir)
    jobs["finish"] = run(pack, run_dir)
    jobs["dir"] = run_dir
    return jobs


def test_stop_at_step_saves_and_the_resumed_run_continues_exactly(hnet_straight, hnet_chain):
    assert hnet_chain["stop_checkpoints"] == ["step-00000003"]
    assert "stopped at step 3 (train.stop_at_step)" in hnet_chain["stop"].stderr
    assert "DeepSpeed ZeRO-1" in hnet_chain["stop"].stderr
    assert "resumed from" in hnet_chain["sigterm"].stderr and "at step 3 (12 samples consumed)" in \
        hnet_chain["sigterm"].stderr
    straight = losses(hnet_straight)
    assert [s for k, s, _ in straight] == [1, 2, 3, 4, 4, 5, 6, 7, 8, 8]  # train steps, valid at 4 and 8
    assert losses(hnet_chain["dir"]) == straight


def test_sigterm_saves_a_verified_checkpoint_exits_75_and_resumes_exactly(hnet_straight, hnet_chain):
    from nucleotron.train.checkpoint import verify

    sigterm = hnet_chain["sigterm"]
    assert sigterm.returncode == REQUEUE, sigterm.stderr[-5000:]
    assert "received SIGTERM" in sigterm.stderr and "exiting 75" in sigterm.stderr
    saved = hnet_chain["sigterm_checkpoints"][-1]
    stopped_at = int(saved.split("-")[1])
    assert 5 <= stopped_at < 8, hnet_chain["sigterm_checkpoints"]
    assert "step-00000004" in hnet_chain["sigterm_checkpoints"]
    assert verify(str(hnet_chain["dir"] / "checkpoints" / saved)) is None
    assert f"at step {stopped_at} ({4 * stopped_at} samples consumed)" in hnet_chain["finish"].stderr
    mine = [r for r in metrics(hnet_chain["dir"]) if r["kind"] == "train"]
    theirs = [r for r in metrics(hnet_straight) if r["kind"] == "train"]
    assert [(r["step"], r["loss"], r["consumed_samples"], r["lr"]) for r in mine] == \
        [(r["step"], r["loss"], r["consumed_samples"], r["lr"]) for r in theirs]
    assert validation(hnet_chain["dir"]) == validation(hnet_straight)

def test_every_rng_state_and_the_data_position_match_the_straight_run(hnet_straight, hnet_chain):
    import json

    from safetensors import safe_open

    def state(run_dir: Path):
        last = run_dir / "checkpoints" / "step-00000008"
        with safe_open(str(last / "rng" / "rank0.safetensors"), "pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            metadata = handle.metadata()
        record = json.loads((last / "nucleotron.json").read_text())
        return tensors, metadata, record["consumed_samples"], record["scheduler"]

    mine, theirs = state(hnet_chain["dir"]), state(hnet_straight)
    assert sorted(mine[1]) == sorted(theirs[1]) and {"python", "numpy"} <= set(mine[1])
    assert mine[1] == theirs[1]                                       # Python and NumPy generators
    assert mine[0].keys() == theirs[0].keys()
    for key in mine[0]:                                               # torch (and CUDA where there is one)
        assert mine[0][key].equal(theirs[0][key]), key
    assert mine[2:] == theirs[2:] == (32, {"step": 8})                # data position, LR schedule
