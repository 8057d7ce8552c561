"""The training loop, top to bottom: packs -> engine (model, optimizer) -> steps, validation, checkpoints, metrics.

`train(cfg)` runs on every rank. It resumes from RUN_DIR/checkpoints/latest when there is one, so re-running the
same command (or a requeued Slurm job) continues where the last verified checkpoint left off, bit-exactly on CPU.
SIGTERM/SIGUSR1 save at the next step boundary and return REQUEUE_EXIT_CODE. What differs between engines
(megatron-core for the GPT family, DeepSpeed for H-Net) lives behind `train/engine.py`; everything here is shared.
"""
from __future__ import annotations

import os
import time
from typing import List

import torch
import torch.distributed as dist

from nucleotron.configs import ConfigError, NucleotronConfig
from nucleotron.configs.exit_codes import REQUEUE_EXIT_CODE

from . import checkpoint as ckpt
from .data import GlobalBatchSampler, build_train_dataset, build_valid_datasets, micro_batches
from .engine import build_engine
from .guard import BadLossError, LossGuard
from .log import init_logging, logger
from .metrics import MetricsLogger, train_record
from .mfu import peak_tflops
from .parallel import device
from .run_dir import RunDirectory, resolve_inputs, seed_everything, total_steps
from .signals import PreemptionWatch
from .validate import Validator

__all__ = ["BadLossError", "Trainer", "resolve_inputs", "train"]


class Trainer:
    """Setup in __init__, one optimizer step in `train_step`, the loop in `train`."""

    def __init__(self, cfg: NucleotronConfig, watch: PreemptionWatch):
        self.cfg, self.watch = cfg, watch
        self.manifest = resolve_inputs(cfg)
        self.seq_len = self.manifest.seq_len
        self.engine = build_engine(cfg)
        self.engine.init_distributed()
        self.rank = dist.get_rank()
        init_logging(self.rank)
        self.run = RunDirectory(cfg, self.rank)
        self.run.open()   # lock, partial saves cleaned, Slurm restart count printed
        try:
            self._setup()
        except BaseException:
            self.run.close()
            raise

    def _setup(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        dp_rank, dp_size = self.engine.data_parallel
        self.num_microbatches = microbatches_per_step(cfg, dp_size)
        self.total_steps = total_steps(cfg, self.seq_len)
        seed_everything(cfg.run.seed + self.engine.seed_offset())
        self.engine.build(self.manifest, self.total_steps)

        self.state, self.last_saved = self.run.resume(self.engine, self.total_steps)
        self.guard = LossGuard(t.bad_loss, t.loss_spike_factor, t.max_consecutive_skips, self.state)
        self.run.record_config(self.state)

        cache = os.path.join(self.run.path, "index-cache")
        train_set = build_train_dataset(self.manifest, self.total_steps * t.global_batch_size, cfg.run.seed, cache,
                                        cfg.data.soft_masked_loss_weight)
        sampler = GlobalBatchSampler(self.total_steps * t.global_batch_size, self.state.consumed_samples,
                                     t.micro_batch_size, t.global_batch_size, dp_rank, dp_size)
        self.batches = micro_batches(train_set, sampler, cfg.data.num_workers, cfg.run.seed)
        valid_samples = t.eval_steps * t.global_batch_size
        self.validator = Validator(build_valid_datasets(self.manifest, valid_samples, cache), valid_samples,
                                   t.micro_batch_size, dp_rank, dp_size)

        self.flops_per_token = self.engine.flops_per_token(self.seq_len)
        self.peak = peak_tflops(t.peak_tflops)
        self.metrics = MetricsLogger(cfg, self.run.path, self.rank == 0, self.state.step, self.state.wandb_run_id,
                                     self.total_steps)
        self.step_times: List[float] = []
        self.grad_norm = float("nan")
        logger.info(f"training {self.total_steps} steps of {t.global_batch_size} x {self.seq_len} tokens on "
                    f"{dist.get_world_size()} process(es) ({self.engine.layout()}), {self.num_microbatches} "
                    f"micro-batches per step; run dir {self.run.path}")
        if self.validator and self.rank == 0:
            logger.info(f"validation: {self.validator.num_samples} samples per group "
                        f"({', '.join(self.validator.datasets)}), tokens sha256 {self.validator.fingerprint()}")
        if self.peak is None:
            logger.info("MFU is not reported: unknown device peak; set train.peak_tflops")

    # ------------------------------------------------------------ one step

    def train_step(self) -> None:
        started = time.perf_counter()
        sums = self.engine.forward_backward(self.batches, self.num_microbatches).all_reduced(device())
        loss = sums.mean_loss
        if self.guard.accept(loss, self.state.step + 1, self.run.checkpoints):
            updated, self.grad_norm = self.engine.optimizer_step()
            self.guard.check_weights(self.engine, self.grad_norm, self.state.step + 1, self.run.checkpoints)
        else:
            self.engine.skip_step()
            self.grad_norm = float("nan")
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.step_times.append(time.perf_counter() - started)
        self.state.unlogged_losses.append(loss)
        self.state.step += 1
        self.state.consumed_samples += self.cfg.train.global_batch_size

    # ------------------------------------------------------------ the loop

    def train(self) -> int:
        cfg, state = self.cfg, self.state
        try:
            while state.step < self.total_steps:
                if self.watch.stop_requested():
                    self.save()
                    logger.info(f"saved step {state.step} after a preemption signal; exiting {REQUEUE_EXIT_CODE} "
                                f"(requeue me)")
                    return REQUEUE_EXIT_CODE
                self.train_step()
                if state.step % cfg.train.log_every == 0 or state.step == self.total_steps:
                    self.log_step()
                if state.step % cfg.train.eval_every == 0:
                    self.validate()
                if state.step % cfg.checkpoint.every == 0:
                    self.save()
                if cfg.train.stop_at_step is not None and cfg.train.stop_at_step <= state.step < self.total_steps:
                    self.save()
                    logger.info(f"stopped at step {state.step} (train.stop_at_step); re-run the command to continue")
                    return 0
            self.validate()
            self.save()
            return 0
        finally:
            self.metrics.close()
            self.run.close()

    # ------------------------------------------------------------ what the loop does between steps

    def log_step(self) -> None:
        record = train_record(self.state, self.step_times, self.engine.learning_rate(), self.grad_norm,
                              self.cfg.train.global_batch_size * self.seq_len, dist.get_world_size(),
                              self.flops_per_token, self.peak)
        record.update(self.engine.statistics())
        self.step_times.clear()
        self.state.unlogged_losses = []
        self.metrics.log(record)
        self.metrics.console(record)

    def validate(self) -> None:
        if not self.validator or self.state.last_eval_step == self.state.step:
            return
        record = {"kind": "valid", "step": self.state.step, **self.validator.run(self.engine, device())}
        self.metrics.log(record)
        self.metrics.console(record)
        self.state.last_eval_step = self.state.step

    def save(self) -> None:
        if self.last_saved == self.state.step:
            return
        self.guard.check_weights(self.engine, self.grad_norm, self.state.step, self.run.checkpoints, saving=True)
        self.state.scheduler = self.engine.schedule_state()
        ckpt.save_checkpoint(self.run.checkpoints, self.engine, self.state, self.cfg.checkpoint.keep)
        self.last_saved = self.state.step


def microbatches_per_step(cfg: NucleotronConfig, dp_size: int) -> int:
    t = cfg.train
    if t.global_batch_size % (t.micro_batch_size * dp_size):
        raise ConfigError(f"train.global_batch_size={t.global_batch_size} is not divisible by "
                          f"train.micro_batch_size={t.micro_batch_size} x data-parallel size {dp_size}")
    return t.global_batch_size // (t.micro_batch_size * dp_size)


def train(cfg: NucleotronConfig) -> int:
    # The handlers stay installed until the process exits: a signal during the final validation or save (or
    # teardown) is recorded, not fatal, and the finished run still exits 0.
    init_logging()
    watch = PreemptionWatch().install()
    trainer = None
    try:
        trainer = Trainer(cfg, watch)
        return trainer.train()
    finally:
        if trainer is not None:
            trainer.engine.shutdown()
        else:
            from .parallel import destroy_distributed

            destroy_distributed()
