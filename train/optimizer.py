"""megatron-core's DDP wrapper, optimizer and LR schedule, configured from the `optim`/`schedule` tree.

GPU: bf16 model with fp32 master weights and the distributed optimizer (optimizer state sharded over data-parallel
ranks). CPU: the same megatron classes on the fp32 path (`FP32Optimizer`; cpu_mode patches its few CUDA tensors).
Gengram k-mer tables get their own LR multiplier and optional weight decay through megatron's parameter-group
overrides, keyed on the attributes `model/gengram.py` puts on the tables.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer import get_standard_config_overrides
from megatron.core.optimizer.optimizer_config import ParamKey
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler, ParamGroupOverride

from nucleotron.configs import NucleotronConfig


def wrap_ddp(model, cfg: NucleotronConfig, distributed_optimizer: bool):
    """megatron's DDP: contiguous grad buffers, data-parallel all-reduce (or reduce-scatter) at the step's end."""
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=distributed_optimizer,
        average_in_collective=False,
    )
    return DistributedDataParallel(config=model.config, ddp_config=ddp_config, module=model)


def optimizer_config(cfg: NucleotronConfig, bf16: bool, distributed_optimizer: bool) -> OptimizerConfig:
    o = cfg.optim
    return OptimizerConfig(
        optimizer="adam",
        lr=o.lr,
        min_lr=o.min_lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2,
        adam_eps=o.adam_eps,
        clip_grad=o.clip_grad,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=distributed_optimizer,
    )


def gengram_overrides(cfg: NucleotronConfig, opt_config: OptimizerConfig):
    """megatron's standard groups (no decay on biases and 1-D weights) plus the Gengram tables' own LR and decay."""
    overrides = dict(get_standard_config_overrides(opt_config) or {})
    g = cfg.model.gengram
    if g.layers and (g.table_lr_mult != 1.0 or not g.table_weight_decay):
        table = ParamGroupOverride(max_lr=cfg.optim.lr * g.table_lr_mult, min_lr=cfg.optim.min_lr * g.table_lr_mult)
        if not g.table_weight_decay:
            table["wd_mult"] = 0.0
        overrides[ParamKey(attr="gengram_table")] = table
    return overrides


@dataclass(frozen=True)
class ScheduleSteps:
    total: int
    warmup: int
    decay_end: int  # cosine from warmup to here, then flat at min_lr


def schedule_steps(cfg: NucleotronConfig, total_steps: int) -> ScheduleSteps:
    s = cfg.schedule
    warmup = int(round(s.warmup_fraction * total_steps))
    decay_end = max(warmup + 1, int(round((s.warmup_fraction + s.decay_fraction) * total_steps)))
    return ScheduleSteps(total_steps, warmup, decay_end)


def build_optimizer(model, cfg: NucleotronConfig, total_steps: int, bf16: bool, distributed_optimizer: bool):
    """(optimizer, scheduler) for the DDP-wrapped model; the scheduler sets each group's LR from step 0."""
    opt_config = optimizer_config(cfg, bf16, distributed_optimizer)
    optimizer = get_megatron_optimizer(opt_config, [model], config_overrides=gengram_overrides(cfg, opt_config))
    steps = schedule_steps(cfg, total_steps)
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=cfg.optim.lr,
        min_lr=cfg.optim.min_lr,
        lr_warmup_steps=steps.warmup,
        lr_decay_steps=steps.decay_end,
        lr_decay_style="cosine",
        start_wd=cfg.optim.weight_decay,
        end_wd=cfg.optim.weight_decay,
        wd_incr_steps=total_steps,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=not cfg.checkpoint.override_schedule,
        override_opt_param_scheduler=cfg.checkpoint.override_schedule,  # resume applies the config's schedule
    )
    return optimizer, scheduler


def hook_model_config(model, optimizer) -> None:
    """Wire megatron's schedule to this model: DP gradient sync at the end of backward, loss scaling, no_sync."""
    config = model.config
    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss
    config.no_sync_func = model.no_sync

