"""Checkpoints under RUN_DIR/checkpoints: the engine's model and optimizer state plus a small trainer state.

Layout of one checkpoint, `checkpoints/step-00001000/`:
- what the engine writes (megatron-core: a reshardable `torch_dist` save of model and optimizer);
- `rng/rank<r>.safetensors`: every RNG state of rank r (Python, NumPy, torch, CUDA, megatron's model-parallel
  tracker) as plain tensors plus JSON metadata: nothing in it is executable;
- `nucleotron.json`, written last: format version, step, consumed samples, scheduler state, W&B run id, the resolved
  config, the loss-spike window, and the size and SHA-256 of every other file in the directory.

A checkpoint is written as `.tmp-step-...`, hashed, renamed when every rank has finished, and only then named in
`checkpoints/latest`. On load every file is checked against nucleotron.json (sizes and content, the hashing shared
by all ranks); a checkpoint that fails is moved aside to `checkpoints/rejected/` with the reason, and the previous
one is used. Retention never deletes the newest verified checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from nucleotron.configs.files import fsync_directory, write_atomic

from .log import logger

FORMAT_VERSION = 2
STATE_FILE = "nucleotron.json"
LATEST = "latest"
PREFIX = "step-"
REJECTED = "rejected"
HASH_CHUNK = 8 << 20


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or used; the message names the directory and what to do."""


def save_sharded(state: dict, directory: str) -> None:
    """megatron-core's `dist_checkpointing.save` (torch_dist, reshardable), synchronously, with the writer's results
    kept in this process.

    Its writer is built for asynchronous saves: it hands results back through a queue owned by a *spawned*
    multiprocessing Manager, a fresh Python process per rank (seconds of start-up; Slurm's signals to the job step
    reach it too, and a killed trainer leaves it behind). Our saves are synchronous, so the results never leave this
    process and a plain in-process queue serves (megatron-core 0.16.1: `filesystem_async._results_queue`, read with
    get_nowait)."""
    import queue

    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if getattr(filesystem_async, "_results_queue", None) is None:
        filesystem_async._results_queue = queue.Queue()
    dist_checkpointing.save(state, directory)


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
    last_eval_step: int = -1  # a finished run re-run must not validate (and log) its last step twice
    consecutive_skips: int = 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _broadcast(value):
    box = [value]
    if dist.is_initialized() and _world() > 1:
        dist.broadcast_object_list(box, src=0)
    return box[0]


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def _step_of(name: str) -> int:
    try:
        return int(name[len(PREFIX):])
    except ValueError:
        return -1


# ---------------------------------------------------------------- RNG states, without pickle


def rng_state_file(directory: str, rank: int) -> str:
    return os.path.join(directory, "rng", f"rank{rank}.safetensors")


def save_rng_state(path: str) -> None:
    from megatron.core import tensor_parallel
    from safetensors.torch import save_file

    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    for key, value in tensor_parallel.get_cuda_rng_tracker().get_states().items():
        tensors[f"tracker/{key}"] = value
    metadata = {"python": json.dumps(random.getstate()),
                "numpy": json.dumps([name, keys.tolist(), int(pos), int(has_gauss), float(cached)])}
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=metadata)


def load_rng_state(path: str) -> None:
    from megatron.core import tensor_parallel
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    version, internal, gauss = json.loads(metadata["python"])
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = json.loads(metadata["numpy"])
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available() and "cuda" in tensors:
        torch.cuda.set_rng_state(tensors["cuda"])
    tracker = {key.split("/", 1)[1]: value for key, value in tensors.items() if key.startswith("tracker/")}
    tensor_parallel.get_cuda_rng_tracker().set_states(tracker)


# ---------------------------------------------------------------- content checks, shared between ranks


def _files(directory: str) -> List[str]:
    found = []
    for root, _, names in os.walk(directory):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), directory)
            if rel != STATE_FILE:
                found.append(rel)
    return sorted(found)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(HASH_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _hash_share(directory: str, names: List[str]) -> Dict[str, dict]:
    """Size and SHA-256 of every file, each rank hashing every world-th file; the union on every rank."""
    mine = {}
    for index, rel in enumerate(names):
        if index % _world() == _rank():
            path = os.path.join(directory, rel)
            try:
                mine[rel] = {"size": os.path.getsize(path), "sha256": _sha256(path)}
            except OSError as err:
                mine[rel] = {"error": str(err)}
    if not dist.is_initialized() or _world() == 1:
        return mine
    gathered = [None] * _world()
    dist.all_gather_object(gathered, mine)
    return {rel: entry for part in gathered for rel, entry in part.items()}


def _problem(directory: str, record: Optional[dict], hashes: Dict[str, dict]) -> Optional[str]:
    """Why this checkpoint cannot be used, or None when every file is what was written."""
    if record is None:
        return f"{STATE_FILE} is missing or unreadable (the save did not finish)"
    if record.get("format_version") not in (1, FORMAT_VERSION):
        return (f"format_version {record.get('format_version')!r} is not {FORMAT_VERSION} (written by another "
                f"Nucleotron version)")
    if record.get("finite") is False:
        return "its weights are not finite"
    for rel, expected in record.get("files", {}).items():
        if record["format_version"] == 1:   # before checksums: sizes only
            expected = {"size": expected, "sha256": hashes.get(rel, {}).get("sha256")}
        actual = hashes.get(rel)
        if actual is None:
            return f"{rel} is missing"
        if "error" in actual:
            return f"{rel} cannot be read ({actual['error']})"
        if actual["size"] != expected["size"]:
            return f"{rel} has {actual['size']} bytes, {expected['size']} were written"
        if actual["sha256"] != expected["sha256"]:
            return f"{rel} does not match the checksum written with it (its content changed)"
    return None


def _read_record(directory: str) -> Optional[dict]:
    try:
        with open(os.path.join(directory, STATE_FILE)) as handle:
            record = json.load(handle)
        return record if isinstance(record, dict) else None
    except (OSError, ValueError):
        return None


def verify(directory: str) -> Optional[str]:
    """Collective: the reason `directory` cannot be used, or None (every rank gets the same answer)."""
    record = _broadcast(_read_record(directory) if _rank() == 0 else None)
    names = sorted(record.get("files", {})) if isinstance(record, dict) else []
    hashes = _hash_share(directory, names)
    return _broadcast(_problem(directory, record, hashes) if _rank() == 0 else None)


# ---------------------------------------------------------------- save, retention


def save_checkpoint(ckpt_root: str, engine, state: TrainerState, keep: int) -> str:
    """Collective: every rank calls it at the same step. Returns the final directory."""
    name = checkpoint_name(state.step)
    final = os.path.join(ckpt_root, name)
    tmp = os.path.join(ckpt_root, ".tmp-" + name)
    try:
        if _rank() == 0:
            os.makedirs(ckpt_root, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        _barrier()
        engine.save(tmp)  # into an empty directory: megatron warns of an "old incomplete checkpoint" otherwise
        rng_file = rng_state_file(tmp, _rank())
        os.makedirs(os.path.dirname(rng_file), exist_ok=True)
        save_rng_state(rng_file)
        _barrier()
        files = _hash_share(tmp, _broadcast(_files(tmp) if _rank() == 0 else None))
        if _rank() == 0:
            record = {"format_version": FORMAT_VERSION, "world_size": _world(), **asdict(state), "finite": True,
                      "files": files, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            write_atomic(os.path.join(tmp, STATE_FILE), json.dumps(record, indent=1))
            if os.path.exists(final):  # a re-save of the same step (e.g. a signal right after a scheduled save)
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_directory(ckpt_root)
            write_atomic(os.path.join(ckpt_root, LATEST), name + "\n")
            prune(ckpt_root, keep, newest_good=name)
    except (OSError, RuntimeError, CheckpointException) as err:   # DCP wraps writer errors in a BaseException
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        reason = "no space left on the device" if _no_space(err) else (str(err).splitlines() or [repr(err)])[0][:300]
        raise CheckpointError(
            f"could not write checkpoint {name} to {ckpt_root}: {reason}. Nothing older was touched "
            f"({_latest_name(ckpt_root) or 'no earlier checkpoint'} stays `latest`); free space or point "
            f"run.dir at a larger file system, then re-run the same command to resume") from None
    _barrier()
    return final


def _no_space(err: BaseException) -> bool:
    text = f"{err} {getattr(err, 'failures', '')}"
    return getattr(err, "errno", None) == 28 or "No space left" in text or "inline_container" in text


def _latest_name(ckpt_root: str) -> Optional[str]:
    try:
        with open(os.path.join(ckpt_root, LATEST)) as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def prune(ckpt_root: str, keep: int, newest_good: str) -> None:
    """Keep the `keep` newest checkpoints up to `newest_good` (just written and verified) and never it; anything
    numbered after it is not this run's future and was moved aside when the run resumed."""
    if keep <= 0:
        return
    limit = _step_of(newest_good)
    done = sorted((d for d in os.listdir(ckpt_root) if d.startswith(PREFIX) and 0 <= _step_of(d) <= limit),
                  key=_step_of)
    for old in done[:-keep]:
        if old != newest_good:
            shutil.rmtree(os.path.join(ckpt_root, old), ignore_errors=True)


# ---------------------------------------------------------------- resume


def _candidates(ckpt_root: str) -> List[str]:
    """Checkpoint names to try, newest first, starting with the one `latest` names."""
    if not os.path.isdir(ckpt_root):
        return []
    names = sorted((d for d in os.listdir(ckpt_root) if d.startswith(PREFIX)), key=_step_of, reverse=True)
    latest = _latest_name(ckpt_root)
    if latest in names:
        names.remove(latest)
        names.insert(0, latest)
    return names


def _reject(ckpt_root: str, name: str, problem: str) -> None:
    """Move an unusable checkpoint aside (kept for inspection, out of resume and retention) with its reason."""
    rejected = os.path.join(ckpt_root, REJECTED)
    os.makedirs(rejected, exist_ok=True)
    target = os.path.join(rejected, f"{name}.{time.strftime('%Y%m%dT%H%M%S')}")
    os.replace(os.path.join(ckpt_root, name), target)
    write_atomic(os.path.join(target, "REJECTED.txt"), problem + "\n")


def find_resumable(ckpt_root: str, reject: bool = True) -> Tuple[Optional[str], List[str]]:
    """Collective: (the newest checkpoint that verifies, or None; the problems of those skipped).

    Each skipped checkpoint is reported and (with `reject`) moved to checkpoints/rejected/, so it neither shadows
    the good one at the next resume nor counts against `checkpoint.keep`."""
    candidates = _broadcast(_candidates(ckpt_root) if _rank() == 0 else None)
    skipped = []
    for name in candidates:
        directory = os.path.join(ckpt_root, name)
        problem = verify(directory)
        if problem is None:
            if reject and skipped and _rank() == 0:
                write_atomic(os.path.join(ckpt_root, LATEST), name + "\n")
            return directory, skipped
        skipped.append(f"{directory}: {problem}")
        if _rank() == 0:
            logger.warning(f"skipping checkpoint {directory}: {problem}; trying the previous one")
            if reject:
                _reject(ckpt_root, name, problem)
        _barrier()
    return None, skipped


def read_state(directory: str) -> TrainerState:
    record = _read_record(directory) or {}
    names = TrainerState.__dataclass_fields__
    return TrainerState(**{k: v for k, v in record.items() if k in names})


def saved_world_size(directory: str) -> int:
    return int((_read_record(directory) or {}).get("world_size", 0))


def load_checkpoint(directory: str, engine) -> TrainerState:
    """Collective: load model and optimizer (resharding if the engine can) and, with the same world size, every
    rank's RNG states."""
    engine.load(directory)
    if not os.path.isfile(rng_state_file(directory, _rank())):
        if _rank() == 0:   # format 1 kept RNG states as pickles, which are not loaded
            logger.warning(f"{directory} predates checkpoint format {FORMAT_VERSION}: model, optimizer and data "
                           f"position are restored, RNG states start fresh (the run is no longer bit-exact)")
    elif saved_world_size(directory) == _world():
        load_rng_state(rng_state_file(directory, _rank()))
    elif _rank() == 0:
        logger.warning(f"{directory} was written by {saved_world_size(directory)} processes, this job has "
                       f"{_world()}: model and optimizer were resharded, RNG states start fresh (the run is no "
                       f"longer bit-exact)")
    return read_state(directory)


def clean_partial_saves(ckpt_root: str) -> None:
    """Remove `.tmp-*` directories a killed job left behind (rank 0, before anything else writes)."""
    if _rank() == 0 and os.path.isdir(ckpt_root):
        for name in os.listdir(ckpt_root):
            if name.startswith(".tmp-"):
                shutil.rmtree(os.path.join(ckpt_root, name), ignore_errors=True)
