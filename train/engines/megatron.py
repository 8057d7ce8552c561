"""The megatron-core engine: GPTModel (dense / MoE, Gengram layers) with TP/PP/EP/SP, megatron DDP and optimizer.

It is the loop's old body, moved behind the seam unchanged: megatron's pipeline schedule runs the micro-batches of
one global batch (`get_forward_backward_func`), the loss function reports `train/loss.py` sums, megatron's optimizer
applies clipped gradients and its OptimizerParamScheduler sets the LR. Model and optimizer are saved with
`dist_checkpointing` (reshardable to another TP/PP/EP layout).
"""
from __future__ import annotations

from functools import partial
from typing import Dict, Iterator, List, Tuple

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.optimizer_param_scheduler import get_canonical_lr_for_logging
from megatron.core.pipeline_parallel import get_forward_backward_func

from nucleotron.configs import NucleotronConfig
from nucleotron.data_prep.manifest import Manifest
from nucleotron.model.flops import training_flops_per_token
from nucleotron.model.gpt import build_gpt_model
from nucleotron.model.stats import model_stats

from .. import loss as loss_accounting
from ..loss import LossSums
from ..optimizer import build_optimizer, hook_model_config, wrap_ddp
from ..parallel import MegatronProcessLayout, destroy_distributed, device
from ..checkpoint import save_sharded
from ..safe_load import restricted_checkpoint_loading


def _unwrap(model):
    while hasattr(model, "module"):
        model = model.module
    return model


class MegatronEngine(MegatronProcessLayout):
    name = "gpt"

    def __init__(self, cfg: NucleotronConfig):
        self.cfg = cfg
        self.model = self.optimizer = self.scheduler = None

    # ------------------------------------------------------------ setup

    def seed_offset(self) -> int:
        return 100 * parallel_state.get_pipeline_model_parallel_rank()

    def layout(self) -> str:
        p = self.cfg.parallel
        return f"TP {p.tensor}, PP {p.pipeline}, EP {p.expert}, DP {self.data_parallel[1]}"

    def build(self, manifest: Manifest, total_steps: int) -> None:
        cfg = self.cfg
        bf16 = cfg.train.precision == "bf16"
        distributed_optimizer = torch.cuda.is_available() and self.data_parallel[1] > 1
        model = build_gpt_model(cfg, vocab=manifest.vocab, pre_process=parallel_state.is_pipeline_first_stage(),
                                post_process=parallel_state.is_pipeline_last_stage())
        model.to(device())
        if bf16:
            from megatron.core.transformer.module import Float16Module

            model = Float16Module(model.config, model)
        self.model = wrap_ddp(model, cfg, distributed_optimizer)
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg, total_steps, bf16, distributed_optimizer)
        hook_model_config(self.model, self.optimizer)
        self.eod, self.seq_len = manifest.eod, manifest.seq_len
        self._schedule = get_forward_backward_func()

    # ------------------------------------------------------------ one global batch

    def _forward_step(self, data_iterator, model):
        batch = next(data_iterator)
        here = device()
        tokens = batch["tokens"].to(here, non_blocking=True)
        labels = batch["labels"].to(here, non_blocking=True)
        positions = batch["position_ids"].to(here, non_blocking=True)
        output = model(tokens, positions, None, labels=labels)  # every stage reads the batch: Gengram needs the ids
        return output, partial(self._loss, labels, batch["loss_mask"].to(here))

    def _loss(self, labels, loss_mask, per_token_loss):
        total, count, sums = loss_accounting.token_loss(per_token_loss, labels, loss_mask, self.eod)
        return total, count.to(torch.int), {"sums": sums}

    @staticmethod
    def _local_sums(reports: List[dict]) -> LossSums:
        """Counted once per tensor-parallel group, on the last pipeline stage."""
        sums = torch.zeros(4, dtype=torch.float64)
        if parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0:
            for report in reports:
                sums += report["sums"].double().cpu()
        return LossSums.from_tensor(sums)

    def _run(self, batches, num_microbatches: int, forward_only: bool) -> LossSums:
        reports = self._schedule(
            forward_step_func=self._forward_step, data_iterator=batches, model=[self.model],
            num_microbatches=num_microbatches, seq_length=self.seq_len,
            micro_batch_size=self.cfg.train.micro_batch_size, forward_only=forward_only)
        return self._local_sums(reports)

    def forward_backward(self, batches: Iterator[dict], num_microbatches: int) -> LossSums:
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        return self._run(batches, num_microbatches, forward_only=False)

    def optimizer_step(self) -> Tuple[bool, float]:
        updated, grad_norm, _ = self.optimizer.step()
        if updated:
            self.scheduler.step(increment=1)
        return bool(updated), float("nan") if grad_norm is None else float(grad_norm)

    def skip_step(self) -> None:
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()

    def evaluate(self, batches: List[dict]) -> LossSums:
        self.model.eval()
        try:
            with torch.no_grad():
                return self._run(iter(batches), len(batches), forward_only=True)
        finally:
            self.model.train()

    # ------------------------------------------------------------ schedule, state, numbers

    def learning_rate(self) -> float:
        return get_canonical_lr_for_logging(self.optimizer.param_groups)

    def schedule_state(self) -> dict:
        return self.scheduler.state_dict()

    def load_schedule_state(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)

    def _sharded_state(self, is_loading: bool, with_optimizer: bool = True) -> dict:
        model_state = self.model.module.sharded_state_dict()
        if not with_optimizer:
            return {"model": model_state}
        return {"model": model_state,
                "optimizer": self.optimizer.sharded_state_dict(model_state, is_loading=is_loading)}

    def save(self, directory: str) -> None:
        save_sharded(self._sharded_state(is_loading=False), directory)

    def load(self, directory: str) -> None:
        fresh = [{k: group[k] for k in ("max_lr", "min_lr") if k in group} for group in self.optimizer.param_groups]
        with restricted_checkpoint_loading(directory):
            loaded = dist_checkpointing.load(self._sharded_state(is_loading=True), directory)
        self.model.module.load_state_dict(loaded["model"])
        self.optimizer.load_state_dict(loaded["optimizer"])
        if self.cfg.checkpoint.override_schedule:   # the groups' LR bounds come back from the checkpoint too
            for group, bounds in zip(self.optimizer.param_groups, fresh):
                group.update(bounds)

    def load_weights(self, directory: str) -> None:
        with restricted_checkpoint_loading(directory):
            loaded = dist_checkpointing.load(self._sharded_state(is_loading=True, with_optimizer=False), directory)
        self.model.module.load_state_dict(loaded["model"])
        if hasattr(self.optimizer, "reload_model_params"):
            self.optimizer.reload_model_params()   # bf16: the fp32 master copies follow the loaded weights

    def statistics(self) -> Dict[str, float]:
        """Gengram gate means and MoE load statistics, averaged over the ranks that hold each layer."""
        local = model_stats(_unwrap(self.model))
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, local)
        merged: Dict[str, List[float]] = {}
        for stats in gathered:
            for key, value in stats.items():
                merged.setdefault(key, []).append(value)
        return {key: sum(values) / len(values) for key, values in sorted(merged.items())}

    def parameters_finite(self) -> bool:
        """Whether every weight of this rank's model is finite (all ranks agree after the all-reduce)."""
        bad = torch.zeros(1, device=device())
        for param in self.model.parameters():
            if not torch.isfinite(param.data).all():
                bad += 1
                break
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(bad)
        return bool(bad.item() == 0)

    def flops_per_token(self, seq_len: int) -> float:
        return training_flops_per_token(self.cfg.model, seq_len)

    def shutdown(self) -> None:
        destroy_distributed()
