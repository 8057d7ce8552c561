"""The DeepSpeed engine: the H-Net family (model.arch=hnet) data-parallel under ZeRO stage 0-3.

DeepSpeed owns what it is good at: ZeRO partitioning of optimizer state, gradients (and parameters at stage 3),
gradient clipping and its checkpoint files. Nucleotron keeps what must match the GPT engine: the loss accounting
(`train/loss.py`), the cosine schedule of `train/optimizer.py` (set on every parameter group times its H-Net stage
LR multiplier), and the global batch: the loop gives each rank its micro-batches, and this engine marks the
accumulation boundary itself (`managed_gradient_accumulation: false`), so `step()` is the only place gradients are
applied.

Precision: fp32 weights, Adam state and gradients everywhere; on GPUs with train.precision=bf16 the forward runs
under bf16 autocast (H-Net's residual projection, router and EMA stay fp32 by construction). CPU runs use DeepSpeed's
CPU accelerator over gloo.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import re
import warnings
from datetime import timedelta
from typing import Dict, Iterator, List, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nucleotron.configs import ConfigError, NucleotronConfig
from nucleotron.model.flops import hnet_training_flops_per_token
from nucleotron.model.hnet import HNetLM, parameter_groups

from .. import loss as loss_accounting
from ..loss import LossSums
from ..parallel import rendezvous_environment, share_cores_between_local_ranks
from ..safe_load import deepspeed_weights_only_loading
from ..schedule import cosine_lr

CHECKPOINT_TAG = "deepspeed"  # DeepSpeed writes <checkpoint dir>/deepspeed/...


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


class DeepSpeedEngine:
    name = "hnet"

    def __init__(self, cfg: NucleotronConfig):
        self.cfg = cfg
        self.engine = None
        self.step = 0  # completed optimizer steps (the schedule's position)
        self._stats = self._empty_stats()

    # ------------------------------------------------------------ setup

    def init_distributed(self) -> None:
        import deepspeed

        rendezvous_environment()
        gpu = torch.cuda.is_available()
        if gpu:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        else:
            share_cores_between_local_ranks()
        if not gpu:
            # The CPU accelerator's shared-memory all-reduce is a C++ extension compiled on first use (about 30 s on
            # two cores, and a compiler on every node); gloo's all-reduce is enough for CPU runs.
            importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        # DeepSpeed's ZeRO-3 calls reduce_scatter_tensor, which torch 2.13 warns about on every step
        warnings.filterwarnings("ignore", message=r".*reduce_scatter_tensor` is deprecated", category=FutureWarning)
        deepspeed.init_distributed(dist_backend="nccl" if gpu else "gloo", auto_mpi_discovery=False,
                                   timeout=timedelta(minutes=10))

    @property
    def data_parallel(self) -> Tuple[int, int]:
        return dist.get_rank(), dist.get_world_size()

    def seed_offset(self) -> int:
        return 0  # every rank holds the whole model: same initial weights everywhere

    def layout(self) -> str:
        return f"DeepSpeed ZeRO-{self.cfg.parallel.zero_stage}, DP {self.data_parallel[1]}"

    def deepspeed_config(self, num_parameters: int) -> dict:
        t, o = self.cfg.train, self.cfg.optim
        dp = self.data_parallel[1]
        bucket = int(min(5e8, max(1e6, num_parameters)))  # ZeRO's buffers: no bigger than the model needs
        zero = {"stage": self.cfg.parallel.zero_stage, "reduce_bucket_size": bucket, "allgather_bucket_size": bucket}
        if self.cfg.parallel.zero_stage == 3:
            # ZeRO-3 keeps parameters below this size whole on every rank (DeepSpeed's default: 1e5 elements). On a
            # small model that would be every parameter, i.e. silently ZeRO-2; scaled down, only norms, biases and
            # other small vectors stay whole, as on a large model.
            zero["stage3_param_persistence_threshold"] = int(min(1e5, num_parameters // 1000))
        return {
            "train_batch_size": t.global_batch_size,
            "train_micro_batch_size_per_gpu": t.micro_batch_size,
            "gradient_accumulation_steps": t.global_batch_size // (t.micro_batch_size * dp),
            "managed_gradient_accumulation": False,
            "gradient_clipping": o.clip_grad,
            "zero_optimization": zero,
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 2 ** 31 - 1,
            "wall_clock_breakdown": False,
        }

    def build(self, manifest, total_steps: int) -> None:
        import deepspeed

        from ..optimizer import schedule_steps

        cfg, o = self.cfg, self.cfg.optim
        model = HNetLM(cfg.model.hnet, cfg.model.vocab_size, cfg.model.norm_eps).to(_device())
        groups = parameter_groups(model, o.weight_decay, cfg.model.hnet.lr_multipliers)
        optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=(o.adam_beta1, o.adam_beta2), eps=o.adam_eps)
        config = self.deepspeed_config(sum(p.numel() for p in model.parameters()))
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        self.module: HNetLM = self.engine.module
        self.eod = manifest.eod
        self.num_microbatches = self.engine.gradient_accumulation_steps()
        self.steps = schedule_steps(cfg, total_steps)
        self.autocast = torch.cuda.is_available() and cfg.train.precision == "bf16"
        self._set_lr()

    # ------------------------------------------------------------ one global batch

    def _autocast(self):
        if self.autocast:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _micro_batch(self, batch: dict, backward: bool):
        here = _device()
        tokens, labels = batch["tokens"].to(here), batch["labels"].to(here)
        with self._autocast():
            out = self.engine(tokens)
        per_token = F.cross_entropy(out.logits.float().flatten(0, 1), labels.flatten(), reduction="none")
        total, count, sums = loss_accounting.token_loss(per_token.view_as(labels), labels,
                                                        batch["loss_mask"].to(here), self.eod)
        ratio = self.module.ratio_losses(out.routers)
        if backward:
            loss = total / count.clamp(min=1) + self.cfg.model.hnet.ratio_loss_weight * sum(ratio)
            self.engine.backward(loss)
            self._record(out.routers, ratio)
        return LossSums.from_tensor(sums)

    def forward_backward(self, batches: Iterator[dict], num_microbatches: int) -> LossSums:
        if num_microbatches != self.num_microbatches:
            raise ValueError(f"DeepSpeed was configured for {self.num_microbatches} micro-batches per step, "
                             f"the loop gave {num_microbatches}")
        self.engine.train()
        total = LossSums()
        for _ in range(num_microbatches):
            total = total + self._micro_batch(next(batches), backward=True)
        return total

    def _set_lr(self) -> None:
        o, s = self.cfg.optim, self.steps
        lr = cosine_lr(self.step, o.lr, o.min_lr, s.warmup, s.decay_end)
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]

    def optimizer_step(self) -> Tuple[bool, float]:
        skipped = self.engine.skipped_steps
        self.engine.step()
        updated = self.engine.skipped_steps == skipped  # DeepSpeed drops a step with a non-finite gradient norm
        norm = self.engine.get_global_grad_norm()
        if updated:
            self.step += 1
            self._set_lr()
        return updated, float("nan") if norm is None else float(norm)

    def skip_step(self) -> None:
        """Drop the accumulated gradients without touching weights, Adam moments or the schedule.

        ZeRO 0/1 still hold them in param.grad (they are reduced in step()); ZeRO 2/3 have already reduced them into
        partitions, so a non-finite gradient is added and step() takes DeepSpeed's own overflow path, which clears
        them and skips the update."""
        if self.cfg.parallel.zero_stage <= 1:
            self.engine.zero_grad()
            return
        tokens = torch.zeros(1, 2, dtype=torch.long, device=_device())
        with self._autocast():
            out = self.engine(tokens)
        self.engine.backward(out.logits.float().sum() * float("nan"), scale_wrt_gas=False)
        skipped = self.engine.skipped_steps
        self.engine.step()
        if self.engine.skipped_steps != skipped + 1:
            raise RuntimeError("DeepSpeed applied a step that was meant to be skipped")

    def evaluate(self, batches: List[dict]) -> LossSums:
        self.engine.eval()
        try:
            with torch.no_grad():
                total = LossSums()
                for batch in batches:
                    total = total + self._micro_batch(batch, backward=False)
                return total
        finally:
            self.engine.train()

    # ------------------------------------------------------------ schedule, state, numbers

    def learning_rate(self) -> float:
        o, s = self.cfg.optim, self.steps
        return cosine_lr(self.step, o.lr, o.min_lr, s.warmup, s.decay_end)

    def schedule_state(self) -> dict:
        return {"step": self.step}

    def load_schedule_state(self, state: dict) -> None:
        self.step = int(state["step"])
        self._set_lr()

    def save(self, directory: str) -> None:
        self.engine.save_checkpoint(directory, tag=CHECKPOINT_TAG, save_latest=False)

    def load(self, directory: str) -> None:
        check_saved_layout(directory, self.cfg.parallel.zero_stage, self.data_parallel[1])
        with deepspeed_weights_only_loading():
            path, _ = self.engine.load_checkpoint(directory, tag=CHECKPOINT_TAG, load_optimizer_states=True,
                                                  load_lr_scheduler_states=False)
        if path is None:
            raise FileNotFoundError(f"{directory}: no DeepSpeed checkpoint ({CHECKPOINT_TAG}/) to resume from")
        self._set_lr()

    def load_weights(self, directory: str) -> None:
        with deepspeed_weights_only_loading():
            path, _ = self.engine.load_checkpoint(directory, tag=CHECKPOINT_TAG, load_module_only=True)
        if path is None:
            raise FileNotFoundError(f"{directory}: no DeepSpeed checkpoint ({CHECKPOINT_TAG}/) to load weights from")

    def parameters_finite(self) -> bool:
        bad = torch.zeros(1, device=_device())
        for param in self.engine.module.parameters():
            data = param.ds_tensor if hasattr(param, "ds_tensor") else param.data  # ZeRO-3: this rank's partition
            if not torch.isfinite(data).all():
                bad += 1
                break
        if dist.get_world_size() > 1:
            dist.all_reduce(bad)
        return bool(bad.item() == 0)

    @staticmethod
    def _empty_stats() -> torch.Tensor:
        return torch.zeros(0, dtype=torch.float64)

    def _record(self, routers, ratio) -> None:
        """Per stage: positions, boundaries, sum of boundary probabilities, ratio loss (summed over micro-batches)."""
        rows = [torch.stack([r.mask.sum().double(), r.boundary.sum().double(), (r.prob * r.mask).sum().double(),
                             loss.detach().double()]) for r, loss in zip(routers, ratio)]
        now = torch.stack(rows).cpu()
        self._stats = now if self._stats.numel() == 0 else self._stats + now
        self._stats_count = getattr(self, "_stats_count", 0) + 1

    def statistics(self) -> Dict[str, float]:
        """Since the last call, per routing stage s: realised compression L/B, mean boundary probability, ratio loss
        (its per-micro-batch mean); identical on every rank."""
        stages = len(self.cfg.model.hnet.target_ratios)
        stats = self._stats if self._stats.numel() else torch.zeros(stages, 4, dtype=torch.float64)
        count = torch.tensor([float(getattr(self, "_stats_count", 0))], dtype=torch.float64)
        packed = torch.cat([stats.flatten(), count]).to(_device())
        if dist.get_world_size() > 1:
            dist.all_reduce(packed)
        stats, count = packed[:-1].view(stages, 4).cpu(), packed[-1].item()
        self._stats, self._stats_count = self._empty_stats(), 0
        result: Dict[str, float] = {}
        for s, (positions, boundaries, prob_sum, ratio_sum) in enumerate(stats.tolist(), start=1):
            if not count:
                continue
            result[f"hnet/stage{s}/compression"] = positions / boundaries if boundaries else float("inf")
            result[f"hnet/stage{s}/boundary_prob"] = prob_sum / positions
            result[f"hnet/stage{s}/ratio_loss"] = ratio_sum / count
        return result

    def flops_per_token(self, seq_len: int) -> float:
        return hnet_training_flops_per_token(self.cfg.model, seq_len)

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def check_saved_layout(directory: str, zero_stage: int, world_size: int) -> None:
    """Refuse, naming the setting, a resume DeepSpeed cannot do (it would stop with a traceback): ZeRO optimizer
    state is split per data-parallel rank and DeepSpeed 0.19 cannot re-split it for another process count, and
    ZeRO-3 files (partitioned weights) are not ZeRO 0-2 files. Read from the names of DeepSpeed's own files."""
    folder = os.path.join(directory, CHECKPOINT_TAG)
    files = os.listdir(folder) if os.path.isdir(folder) else []
    if not files:
        return  # load() reports the missing checkpoint
    ranks = {int(m.group(1)) for m in (re.match(r"zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$", f)
                                       for f in files) if m}
    stage3 = any(re.match(r"zero_pp_rank_\d+_mp_rank_\d+_model_states\.pt$", f) for f in files)
    saved = "3" if stage3 else "1 or 2" if ranks else "0"
    if stage3 != (zero_stage == 3) or bool(ranks) != (zero_stage > 0):
        raise ConfigError(f"{directory} was written with parallel.zero_stage={saved}, this run has "
                          f"parallel.zero_stage={zero_stage}, and DeepSpeed cannot convert between them: resume "
                          f"with the stage it was written with")
    if ranks and len(ranks) != world_size:
        weights = "" if stage3 else f" (a new run can start from its weights: checkpoint.init_from={directory})"
        raise ConfigError(f"{directory} holds ZeRO-{saved} optimizer state split over {len(ranks)} data-parallel "
                          f"processes, this job has {world_size}, and DeepSpeed cannot re-split it: resume with "
                          f"{len(ranks)} process{'es' if len(ranks) > 1 else ''}{weights}")
