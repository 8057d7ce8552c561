"""Checkpoints under RUN_DIR/checkpoints: megatron dist_checkpointing (reshardable) plus a small trainer state.

Layout of one checkpoint, `checkpoints/step-00001000/`:
- the model and optimizer as a megatron-core `torch_dist` sharded checkpoint (loads under another TP/PP layout);
- `rng/rank<r>.pt`: every RNG state of rank r (Python, NumPy, torch, CUDA, megatron's model-parallel tracker);
- `nucleotron.json`, written last: format version, step, consumed samples, scheduler state, W&B run id, the resolved
  config, the loss-spike window, and the size of every file in the directory.

A checkpoint is written as `.tmp-step-...`, renamed when every rank has finished, and only then named in
`checkpoints/latest`. On load a checkpoint whose nucleotron.json is missing or whose files do not match it (partial
or truncated) is skipped with a warning and the previous one is used.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, tensor_parallel

from .files import write_text_atomic

FORMAT_VERSION = 1
STATE_FILE = "nucleotron.json"
LATEST = "latest"
PREFIX = "step-"


@dataclass
class TrainerState:
    """Everything besides tensors that an exact resume needs."""

    step: int = 0
    consumed_samples: int = 0
    skipped_steps: int = 0
    recent_losses: List[float] = field(default_factory=list)  # the loss-spike detector's window
    unlogged_losses: List[float] = field(default_factory=list)  # since the last log line (which logs their mean)
    scheduler: dict = field(default_factory=dict)
    wandb_run_id: Optional[str] = None
    config_yaml: str = ""


def warn(message: str) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"[nucleotron] warning: {message}", file=sys.stderr, flush=True)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def start_checkpoint_writer(preemption_signals) -> None:
    """Start megatron's checkpoint-writer results queue with the preemption signals blocked.

    The writer keeps a spawned multiprocessing Manager process; Slurm signals every process of a job step, and
    SIGUSR1's default action would kill that process and with it the very save the signal asks for. A blocked signal
    mask survives the spawn, so the Manager never sees them; the trainer's own handler is back right after.
    """
    from multiprocessing import resource_tracker

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    previous = signal.pthread_sigmask(signal.SIG_BLOCK, preemption_signals)
    try:
        # The Manager needs multiprocessing's resource tracker, whose start unblocks SIGINT/SIGTERM on its way
        # out: start it first (it inherits the block too), then block again for the Manager.
        resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_BLOCK, preemption_signals)
        filesystem_async._get_write_results_queue()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _file_sizes(directory: str) -> dict:
    sizes = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, directory)
            if rel != STATE_FILE:
                sizes[rel] = os.path.getsize(path)
    return sizes


def _sharded_state(model, optimizer, is_loading: bool) -> dict:
    model_state = model.sharded_state_dict()
    return {"model": model_state, "optimizer": optimizer.sharded_state_dict(model_state, is_loading=is_loading)}


def save_checkpoint(ckpt_root: str, model, optimizer, state: TrainerState, keep: int) -> str:
    """Collective: every rank calls it at the same step. Returns the final directory."""
    name = checkpoint_name(state.step)
    final = os.path.join(ckpt_root, name)
    tmp = os.path.join(ckpt_root, ".tmp-" + name)
    if _rank() == 0:
        os.makedirs(ckpt_root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    _barrier()
    dist_checkpointing.save(_sharded_state(model, optimizer, is_loading=False), tmp)
    os.makedirs(os.path.join(tmp, "rng"), exist_ok=True)
    torch.save(_rng_state(), os.path.join(tmp, "rng", f"rank{_rank()}.pt"))
    _barrier()
    if _rank() == 0:
        record = {"format_version": FORMAT_VERSION, "world_size": _world(), **state.__dict__,
                  "files": _file_sizes(tmp)}
        write_text_atomic(os.path.join(tmp, STATE_FILE), json.dumps(record, indent=1))
        if os.path.exists(final):  # a re-save of the same step (e.g. a signal right after a scheduled save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        write_text_atomic(os.path.join(ckpt_root, LATEST), name + "\n")
        _prune(ckpt_root, keep)
    _barrier()
    return final


def _prune(ckpt_root: str, keep: int) -> None:
    done = sorted(d for d in os.listdir(ckpt_root) if d.startswith(PREFIX))
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(ckpt_root, old), ignore_errors=True)


def _problem(directory: str) -> Optional[str]:
    """Why this checkpoint cannot be used, or None when it is complete."""
    path = os.path.join(directory, STATE_FILE)
    if not os.path.isfile(path):
        return f"{STATE_FILE} is missing (the save did not finish)"
    try:
        with open(path) as handle:
            record = json.load(handle)
    except (OSError, ValueError) as err:
        return f"{STATE_FILE} is unreadable ({err})"
    if record.get("format_version") != FORMAT_VERSION:
        return f"format_version {record.get('format_version')!r} is not {FORMAT_VERSION}"
    actual = _file_sizes(directory)
    for rel, size in record.get("files", {}).items():
        if rel not in actual:
            return f"{rel} is missing"
        if actual[rel] != size:
            return f"{rel} has {actual[rel]} bytes, {size} were written"
    return None


def _candidates(ckpt_root: str) -> List[str]:
    """Checkpoint names to try, newest first, starting with the one `latest` names."""
    if not os.path.isdir(ckpt_root):
        return []
    names = sorted((d for d in os.listdir(ckpt_root) if d.startswith(PREFIX)), reverse=True)
    latest_path = os.path.join(ckpt_root, LATEST)
    if os.path.isfile(latest_path):
        with open(latest_path) as handle:
            latest = handle.read().strip()
        if latest in names:
            names.remove(latest)
            names.insert(0, latest)
    return names


def find_resumable(ckpt_root: str) -> Optional[str]:
    """Rank 0 picks the newest complete checkpoint (warning about each one it skips); every rank gets its path."""
    choice = [None]
    if _rank() == 0:
        for name in _candidates(ckpt_root):
            problem = _problem(os.path.join(ckpt_root, name))
            if problem is None:
                choice[0] = os.path.join(ckpt_root, name)
                break
            warn(f"skipping checkpoint {os.path.join(ckpt_root, name)}: {problem}; trying the previous one")
    if dist.is_initialized() and _world() > 1:
        dist.broadcast_object_list(choice, src=0)
    return choice[0]


def read_state(directory: str) -> TrainerState:
    with open(os.path.join(directory, STATE_FILE)) as handle:
        record = json.load(handle)
    names = TrainerState.__dataclass_fields__
    return TrainerState(**{k: v for k, v in record.items() if k in names})


def saved_world_size(directory: str) -> int:
    with open(os.path.join(directory, STATE_FILE)) as handle:
        return int(json.load(handle)["world_size"])


def load_checkpoint(directory: str, model, optimizer) -> TrainerState:
    """Collective: load model and optimizer (resharding if the layout changed) and, with the same world size,
    every rank's RNG states."""
    loaded = dist_checkpointing.load(_sharded_state(model, optimizer, is_loading=True), directory)
    model.load_state_dict(loaded["model"])
    optimizer.load_state_dict(loaded["optimizer"])
    if saved_world_size(directory) == _world():
        _set_rng_state(torch.load(os.path.join(directory, "rng", f"rank{_rank()}.pt"), weights_only=False))
    else:
        warn(f"{directory} was written by {saved_world_size(directory)} processes, this job has {_world()}: "
             f"model and optimizer were resharded, RNG states start fresh (the run is no longer bit-exact)")
    return read_state(directory)


def clean_partial_saves(ckpt_root: str) -> None:
    """Remove `.tmp-*` directories a killed job left behind (rank 0, before anything else writes)."""
    if _rank() == 0 and os.path.isdir(ckpt_root):
        for name in os.listdir(ckpt_root):
            if name.startswith(".tmp-"):
                shutil.rmtree(os.path.join(ckpt_root, name), ignore_errors=True)
