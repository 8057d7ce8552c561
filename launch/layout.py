"""Does the config's parallel layout fit the number of processes the job will start?

The config loader checks what a config says on its own (heads divisible by TP, ...); only the launcher knows the
world size, so these checks live here and run before anything is queued.
"""
from __future__ import annotations

from typing import List

from nucleotron.configs import NucleotronConfig

from .quoting import LaunchError


def layout_problems(cfg: NucleotronConfig, world_size: int, where: str) -> List[str]:
    """Each problem names the config keys and the process count (`where` says how it was set)."""
    p, t = cfg.parallel, cfg.train
    model_parallel = p.tensor * p.pipeline * p.context
    if world_size % model_parallel:
        return [f"{world_size} processes ({where}) is not a multiple of parallel.tensor x pipeline x context = "
                f"{p.tensor} x {p.pipeline} x {p.context} = {model_parallel}; change the process count or the "
                f"parallel sizes"]
    problems = []
    data_parallel = world_size // model_parallel
    if t.global_batch_size % (t.micro_batch_size * data_parallel):
        problems.append(
            f"train.global_batch_size={t.global_batch_size} is not divisible by train.micro_batch_size="
            f"{t.micro_batch_size} x data-parallel size {data_parallel} ({world_size} processes ({where}) / "
            f"{model_parallel} model-parallel); change the batch sizes or the process count")
    expert_group = p.tensor * p.expert * p.pipeline
    if cfg.model.moe.num_experts and p.expert > 1 and world_size % expert_group:
        problems.append(
            f"{world_size} processes ({where}) is not a multiple of parallel.tensor x expert x pipeline = "
            f"{expert_group}; change parallel.expert or the process count")
    return problems


def check_layout(cfg: NucleotronConfig, world_size: int, where: str) -> None:
    problems = layout_problems(cfg, world_size, where)
    if problems:
        raise LaunchError(f"run {cfg.run.name!r} does not fit the job:\n  - " + "\n  - ".join(problems))
