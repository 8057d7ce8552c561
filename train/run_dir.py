"""RUN_DIR: inputs resolved and checked, the exclusive lock, resume from the newest verified checkpoint (or refuse
to start over silently), the recorded config and the W&B run id."""
from __future__ import annotations

import math
import os
import random
from typing import Optional, Tuple

import numpy as np
import torch
from omegaconf import OmegaConf

from nucleotron.configs import ConfigError, NucleotronConfig, to_yaml, validate
from nucleotron.configs.files import write_atomic
from nucleotron.data_prep.manifest import Manifest, load_manifest
from nucleotron.data_prep.verify import verify_pack

from . import checkpoint as ckpt
from .log import logger
from .metrics import new_wandb_run_id
from .run_lock import RunLock

# Settings a resume would silently replace with the checkpoint's (the LR schedule and data order are restored from
# it): a change is refused unless checkpoint.override_schedule applies the schedule part deliberately.
SCHEDULE_KEYS = ("optim.lr", "optim.min_lr", "optim.weight_decay", "schedule.warmup_fraction",
                 "schedule.decay_fraction", "train.max_steps", "train.max_tokens")
FIXED_KEYS = ("run.seed", "train.global_batch_size", "optim.adam_beta1", "optim.adam_beta2", "optim.adam_eps")


def resolve_inputs(cfg: NucleotronConfig) -> Manifest:
    """The pack's manifest, with the config adapted to it (sequence length, CPU precision) and validated again on
    the values that will run, or a clear error."""
    if not cfg.data.packs:
        raise ConfigError("data.packs is not set: make packs with `nucleotron data prep ... --out DIR` and pass "
                          "data.packs=DIR")
    manifest = load_manifest(cfg.data.packs)
    verify_pack(manifest.directory, full=cfg.data.verify == "full")   # size, index header, checksums: name the file
    if cfg.data.seq_len != manifest.seq_len:
        logger.info(f"data.seq_len follows the pack: {manifest.seq_len} (config had {cfg.data.seq_len})")
        cfg.data.seq_len = manifest.seq_len
    if not torch.cuda.is_available() and cfg.train.precision != "fp32":
        logger.info("no CUDA device: CPU mode trains in fp32 (train.precision=bf16 applies on GPUs)")
        cfg.train.precision = "fp32"
    validate(cfg, f"config resolved against {manifest.directory}")
    if max(manifest.vocab.values()) >= cfg.model.vocab_size:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is too small for the pack's token ids "
                          f"(largest {max(manifest.vocab.values())}); use at least {manifest.vocab_size}")
    if cfg.data.soft_masked_loss_weight != 1.0 and manifest.soft_mask_bit is None:
        raise ConfigError(f"data.soft_masked_loss_weight={cfg.data.soft_masked_loss_weight} needs soft-mask bits, but "
                          f"{manifest.directory} was made without them; re-run `nucleotron data prep` with "
                          f"--soft-mask, or set data.soft_masked_loss_weight=1")
    if "train" not in manifest.blend:
        raise ConfigError(f"{manifest.directory} has no train split; re-run `nucleotron data prep` with fewer "
                          f"held-out chromosomes")
    return manifest


def total_steps(cfg: NucleotronConfig, seq_len: int) -> int:
    if cfg.train.max_steps is not None:
        return int(cfg.train.max_steps)
    if cfg.train.max_tokens is not None:
        return max(1, math.ceil(cfg.train.max_tokens / (cfg.train.global_batch_size * seq_len)))
    raise ConfigError("set train.max_steps or train.max_tokens (the run's length)")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _flat(tree, prefix: str) -> dict:
    out = {}
    for key, value in (tree or {}).items():
        out.update(_flat(value, f"{prefix}.{key}") if isinstance(value, dict) else {f"{prefix}.{key}": value})
    return out


def _config_values(yaml_text: str) -> dict:
    """{"optim.lr": 0.0001, ...} of a config's YAML."""
    tree = OmegaConf.to_container(OmegaConf.create(yaml_text), resolve=True)
    return {key[1:]: value for key, value in _flat(tree, "").items()}


def _differences(saved_yaml: str, cfg: NucleotronConfig, keys) -> list:
    saved = _config_values(saved_yaml)
    current = _config_values(to_yaml(cfg))
    return [f"{k}: checkpoint {saved.get(k)!r}, config {current.get(k)!r}" for k in keys
            if k in saved and saved.get(k) != current.get(k)]


def check_resume_config(saved_yaml: str, cfg: NucleotronConfig, directory: str) -> None:
    """A checkpoint of another architecture cannot continue this run: say which keys differ."""
    saved = _config_values(saved_yaml)
    current = _config_values(to_yaml(cfg))
    model_keys = sorted(k for k in set(saved) | set(current) if k.startswith("model.")
                        and k not in ("model.recompute", "model.attention_backend", "model.te"))
    differing = [f"{k}: checkpoint {saved.get(k)!r}, config {current.get(k)!r}" for k in model_keys
                 if saved.get(k) != current.get(k)]
    if differing:
        raise ConfigError(f"{directory} holds a different model than the config ({'; '.join(differing)}); "
                          f"resume with the same model settings or use a new run.dir")


def check_resume_settings(saved_yaml: str, cfg: NucleotronConfig, directory: str) -> None:
    """Settings the checkpoint would override without a word: refuse, or (schedule keys, with
    checkpoint.override_schedule=true) apply them and say so."""
    fixed = _differences(saved_yaml, cfg, FIXED_KEYS)
    schedule = _differences(saved_yaml, cfg, SCHEDULE_KEYS)
    if fixed:
        raise ConfigError(f"{directory} was trained with other settings that a resume cannot change "
                          f"({'; '.join(fixed)}); resume with the checkpoint's values or use a new run.dir")
    if schedule and not cfg.checkpoint.override_schedule:
        raise ConfigError(f"{directory} was trained with another LR schedule or length ({'; '.join(schedule)}); "
                          f"resume with the checkpoint's values, or pass checkpoint.override_schedule=true to apply "
                          f"the new ones from this step on")
    if schedule:
        logger.info(f"checkpoint.override_schedule: applying the config's schedule from here on "
                    f"({'; '.join(schedule)})")


class RunDirectory:
    """RUN_DIR of one run, seen from every rank (rank 0 writes)."""

    def __init__(self, cfg: NucleotronConfig, rank: int):
        self.cfg, self.rank = cfg, rank
        self.path = os.path.abspath(cfg.run.dir)
        self.checkpoints = os.path.join(self.path, "checkpoints")
        self.lock: Optional[RunLock] = None

    def open(self) -> None:
        """Rank 0 creates RUN_DIR, takes its lock (one trainer per run directory) and removes partial saves."""
        error = None
        if self.rank == 0:
            try:
                os.makedirs(self.path, exist_ok=True)
                self.lock = RunLock(self.path).acquire()
                ckpt.clean_partial_saves(self.checkpoints)
                restarts = os.environ.get("SLURM_RESTART_COUNT")
                if restarts is not None:
                    print(f"SLURM_RESTART_COUNT={restarts}", flush=True)
            except (OSError, ConfigError) as err:
                error = err
        error = ckpt._broadcast(str(error) if error else None)
        if error:
            raise ConfigError(error)

    def resume(self, engine, total_steps: int) -> Tuple[ckpt.TrainerState, int]:
        """(trainer state, step of the checkpoint it came from or -1): the newest verified checkpoint, else the
        weights of checkpoint.init_from, else a fresh start, which is refused over unusable checkpoints."""
        cfg = self.cfg
        resume_dir, skipped = ckpt.find_resumable(self.checkpoints)
        if resume_dir is None:
            rejected = os.path.join(self.checkpoints, ckpt.REJECTED)
            if (skipped or (os.path.isdir(rejected) and os.listdir(rejected))) and not cfg.checkpoint.allow_restart:
                raise ckpt.CheckpointError(
                    f"{self.checkpoints} holds no usable checkpoint (unusable ones are in {rejected}); refusing to "
                    f"start over from step 0 over them. Restore a good checkpoint there, or pass "
                    f"checkpoint.allow_restart=true to start from scratch (metrics.jsonl is cut back to step 0)")
            if skipped or cfg.checkpoint.allow_restart and os.path.isdir(rejected):
                logger.warning(f"STARTING OVER FROM STEP 0 in {self.path} (checkpoint.allow_restart=true)")
            if cfg.checkpoint.init_from:
                self._load_weights(engine, cfg.checkpoint.init_from)
            return ckpt.TrainerState(), -1
        saved = ckpt.read_state(resume_dir)
        check_resume_config(saved.config_yaml, cfg, resume_dir)
        check_resume_settings(saved.config_yaml, cfg, resume_dir)
        state = ckpt.load_checkpoint(resume_dir, engine)
        engine.load_schedule_state(state.scheduler)
        logger.info(f"resumed from {resume_dir} at step {state.step} ({state.consumed_samples:,} samples consumed)")
        return state, state.step

    def _load_weights(self, engine, directory: str) -> None:
        directory = os.path.abspath(directory)
        saved = ckpt.read_state(directory)
        if not saved.config_yaml:
            raise ConfigError(f"checkpoint.init_from={directory} is not a Nucleotron checkpoint "
                              f"({ckpt.STATE_FILE} missing or unreadable)")
        check_resume_config(saved.config_yaml, self.cfg, directory)
        engine.load_weights(directory)
        logger.info(f"initialised the model from {directory} (weights only; optimizer and schedule start fresh)")

    def record_config(self, state: ckpt.TrainerState) -> None:
        """config.yaml is what runs now; the W&B run id continues across requeues."""
        state.config_yaml = to_yaml(self.cfg)
        if self.rank == 0:
            write_atomic(os.path.join(self.path, "config.yaml"), state.config_yaml)
            if self.cfg.logging.wandb:
                state.wandb_run_id = self._wandb_run_id(state.wandb_run_id)

    def _wandb_run_id(self, saved: Optional[str]) -> str:
        """The checkpoint's id; else the id a job that died before its first checkpoint recorded; else a new one."""
        path = os.path.join(self.path, "wandb-run-id")
        if saved:
            return saved
        if os.path.isfile(path):
            with open(path) as handle:
                return handle.read().strip()
        run_id = new_wandb_run_id()
        write_atomic(path, run_id + "\n")
        return run_id

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
