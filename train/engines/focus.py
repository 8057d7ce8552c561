"""The FOCUS engine: train a FOCUS adapter (summary embedding + adapter projections) on a frozen GPT checkpoint.

Chosen by focus.base_checkpoint (`nucleotron focus train --checkpoint CKPT` sets it; train/engine.py), so the loop,
its data position, RNG states, signals and requeue, checkpoint layout and verification, metrics, W&B and validation
are pretraining's. What differs from the megatron engine:
- the model is the checkpoint's (its config replaces model.*; only attention_backend / te / recompute stay the
  run's), loaded once, frozen (requires_grad False), in eval mode, and never saved: a checkpoint of this engine holds
  `focus/adapter.safetensors` (the adapter file `nucleotron focus score|eval` read, with the base checkpoint's path
  and content hash in its metadata) and `focus/optimizer.safetensors` (AdamW state, no pickle);
- data parallelism is torch DDP over the adapter's parameters only (gloo on CPU, NCCL on GPUs; the backbone is
  excluded from DDP's broadcasts, every rank loads it from the checkpoint); model parallelism is refused;
- the objective is FOCUS's (eq. 6 next real base at every position, plus focus.distill_kl x KL(base || focus));
  the reported loss and bits per base are the FOCUS model's on base positions, comparable with the base run's.
Precision: fp32 throughout (train.precision=bf16 is not applied yet; the GPU path is untested). The LR schedule is
pretraining's (linear warmup from 0, cosine to optim.min_lr, as megatron's scheduler), and k under focus.k_sampling
is drawn from (run.seed, step), so a resumed run replays the same k.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
from dataclasses import asdict, fields
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from nucleotron.configs import ConfigError, NucleotronConfig, validate
from nucleotron.configs.schema import ModelConfig
from nucleotron.data_prep.manifest import Manifest

from .. import checkpoint as ckpt
from ..loss import LossSums
from ..optimizer import schedule_steps
from ..parallel import MegatronProcessLayout, destroy_distributed, device
from ..schedule import cosine_lr

ADAPTER_FILE = os.path.join("focus", "adapter.safetensors")
OPTIMIZER_FILE = os.path.join("focus", "optimizer.safetensors")
RUNTIME_MODEL_KEYS = ("attention_backend", "te", "recompute")  # how the frozen model runs, not what it is
# focus.* settings that may change when a run resumes (the rest define what the adapter computes)
RUNTIME_FOCUS_KEYS = ("attention_kernel",)


def read_base(path: str):
    """The frozen checkpoint (infer.checkpoint.Checkpoint) behind focus.base_checkpoint, or a ConfigError naming it."""
    from nucleotron.infer.checkpoint import CheckpointError, read_checkpoint

    try:
        base = read_checkpoint(path)
    except (CheckpointError, OSError, ValueError) as err:
        raise ConfigError(f"focus.base_checkpoint={path}: {err}") from None
    if base.cfg.model.arch != "gpt":
        raise ConfigError(f"focus.base_checkpoint={path} ({base.directory}) holds a model.arch="
                          f"{base.cfg.model.arch!r} model; FOCUS adapts the attention of GPT-family checkpoints "
                          f"(model.arch=gpt), so pass one of those")
    return base


def adopt_base_model(cfg: NucleotronConfig, base_cfg: NucleotronConfig, source: str) -> None:
    """cfg.model becomes the checkpoint's. A config that sets a model of its own (anything but the schema defaults)
    must set the checkpoint's, so a typo'd preset cannot silently train against another architecture."""
    def values(model: ModelConfig) -> dict:
        return {k: v for k, v in asdict(model).items() if k not in RUNTIME_MODEL_KEYS}

    mine, theirs = values(cfg.model), values(base_cfg.model)
    if mine != theirs and mine != values(ModelConfig()):
        differing = [f"model.{k}: checkpoint {theirs[k]!r}, config {mine[k]!r}" for k in mine if mine[k] != theirs[k]]
        raise ConfigError(f"the model of a FOCUS run is the frozen checkpoint's ({source}), but the config sets "
                          f"another ({'; '.join(differing[:6])}); remove the model settings from the config")
    runtime = {k: getattr(cfg.model, k) for k in RUNTIME_MODEL_KEYS}
    cfg.model = base_cfg.model
    for key, value in runtime.items():
        setattr(cfg.model, key, value)


def checkpoint_digest(directory: str) -> str:
    """Collective: SHA-256 over the names and contents of every file of a checkpoint directory (the hashing shared
    by the ranks), after checking them against the checksums its nucleotron.json recorded, when it has them."""
    names = ckpt._broadcast(sorted(ckpt._files(directory)) if ckpt._rank() == 0 else None)
    hashes = ckpt._hash_share(directory, names)
    for rel, entry in hashes.items():
        if "error" in entry:
            raise ConfigError(f"focus.base_checkpoint: {os.path.join(directory, rel)} cannot be read "
                              f"({entry['error']})")
    record = ckpt._read_record(directory)
    if record and record.get("files"):
        problem = ckpt._problem(directory, record, hashes)
        if problem:
            raise ConfigError(f"focus.base_checkpoint: {directory} fails verification ({problem}); restore it or "
                              f"pass another checkpoint")
    return hashlib.sha256(json.dumps({rel: hashes[rel]["sha256"] for rel in names}, sort_keys=True).encode()
                          ).hexdigest()


class _Objective(torch.nn.Module):
    """What DDP wraps: the FocusModel's masked parallel forward and the FOCUS loss, returning tensors only."""

    def __init__(self, focus):
        super().__init__()
        self.focus = focus

    def forward(self, tokens, labels, loss_mask, k: int, eod: int, teacher: Optional[torch.Tensor]):
        from nucleotron.model.focus.loss import pack_batch_loss

        cfg = self.focus.cfg
        logits, layout = self.focus(tokens, k=k)
        return pack_batch_loss(logits, layout, labels, loss_mask, eod, cfg.summary_loss, cfg.distill_kl, teacher)


class FocusEngine(MegatronProcessLayout):
    name = "focus"

    def __init__(self, cfg: NucleotronConfig):
        self.cfg = cfg
        self.base_ckpt = read_base(cfg.focus.base_checkpoint)
        self.base_dir = self.base_ckpt.directory
        adopt_base_model(cfg, self.base_ckpt.cfg, self.base_dir)
        cfg.focus.base_checkpoint = self.base_dir  # absolute: the recorded config resumes from any directory
        p = cfg.parallel
        if (p.tensor, p.pipeline, p.context, p.expert) != (1, 1, 1, 1) or p.sequence_parallel:
            raise ConfigError("FOCUS training is data-parallel only (the adapter is small and every rank holds the "
                              "frozen model): set parallel.tensor, parallel.pipeline, parallel.context and "
                              "parallel.expert to 1 and parallel.sequence_parallel=false")
        validate(cfg, f"config with the model of {self.base_dir}")
        self.step = 0
        self.model = self.ddp = self.optimizer = None
        self._kl = torch.zeros(2, dtype=torch.float64)

    # ------------------------------------------------------------ setup

    def seed_offset(self) -> int:
        return 0

    def layout(self) -> str:
        backend = "NCCL" if torch.cuda.is_available() else "gloo"
        return f"FOCUS adapter on frozen {self.base_dir}, torch DDP ({backend}) DP {self.data_parallel[1]}"

    def _check_lengths(self, manifest: Manifest) -> None:
        f, seq_len = self.cfg.focus, manifest.seq_len
        if f.window >= seq_len:
            raise ConfigError(f"focus.window={f.window} is not below the pack's sequence length {seq_len}: no window "
                              f"ends inside a training sequence, so the summaries would never be needed; use a "
                              f"smaller focus.window or packs with longer sequences")
        too_long = [k for k in (f.k_sampling or [f.k]) if k >= seq_len]
        if too_long:
            raise ConfigError(f"focus.k / focus.k_sampling value(s) {too_long} are not below the pack's sequence "
                              f"length {seq_len}: a training sequence would hold no summary token")
        if self.base_ckpt.vocab and any(manifest.vocab.get(t) != i for t, i in self.base_ckpt.vocab.items()
                                        if t in manifest.vocab):
            raise ConfigError(f"{manifest.directory} numbers its tokens differently from {self.base_dir} "
                              f"(pack {dict(manifest.vocab)}, checkpoint {self.base_ckpt.vocab}); train the adapter "
                              f"on packs made like the checkpoint's")
        if f.summary_token_id in manifest.vocab.values():
            raise ConfigError(f"focus.summary_token_id={f.summary_token_id} is a token of {manifest.directory}; pick "
                              f"an id the packs never use")

    def build(self, manifest: Manifest, total_steps: int) -> None:
        from torch.nn.parallel import DistributedDataParallel

        from nucleotron.infer.checkpoint import load_weights
        from nucleotron.model.focus import FocusModel
        from nucleotron.model.gpt import build_gpt_model

        from ..safe_load import restricted_checkpoint_loading

        cfg, o = self.cfg, self.cfg.optim
        self._check_lengths(manifest)
        if cfg.train.precision != "fp32":
            from ..log import logger

            logger.info(f"train.precision={cfg.train.precision}: the FOCUS engine runs the frozen model and the "
                        f"adapter in fp32 (bf16 is not applied here yet)")
        self.base_sha256 = checkpoint_digest(self.base_dir)
        base = build_gpt_model(cfg, vocab=manifest.vocab).to(device())
        with restricted_checkpoint_loading(self.base_dir):
            load_weights(base, self.base_dir)
        try:
            self.model = FocusModel(base, cfg.focus)
        except ValueError as err:  # MLA, biases: the wrapper says which setting
            raise ConfigError(f"{self.base_dir}: {err}") from None
        self.names = [name for name, p in self.model.named_parameters() if p.requires_grad]
        objective = _Objective(self.model)
        frozen = [f"focus.{name}" for name, p in self.model.named_parameters() if not p.requires_grad]
        frozen += [f"focus.{name}" for name, _ in self.model.named_buffers()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(objective, frozen)
        self.ddp = DistributedDataParallel(objective, process_group=parallel_state.get_data_parallel_group(),
                                           find_unused_parameters=False)  # every buffer is ignored: none synced
        self.optimizer = torch.optim.AdamW(self.model.trainable_parameters(), lr=o.lr, betas=(o.adam_beta1,
                                           o.adam_beta2), eps=o.adam_eps, weight_decay=o.weight_decay)
        self.steps = schedule_steps(cfg, total_steps)
        self.eod = manifest.eod
        self._set_lr()

    # ------------------------------------------------------------ one global batch

    def _k(self) -> int:
        f = self.cfg.focus
        if not f.k_sampling:
            return f.k
        return random.Random(self.cfg.run.seed * 1_000_003 + self.step).choice(list(f.k_sampling))

    def _micro_batch(self, batch: dict, k: int, training: bool):
        here = device()
        tokens, labels = batch["tokens"].to(here), batch["labels"].to(here)
        teacher = None
        if self.cfg.focus.distill_kl > 0 and training:
            with torch.no_grad():
                teacher = self.model.base_logits(tokens)
        module = self.ddp if training else self.ddp.module
        return module(tokens, labels, batch["loss_mask"].to(here), k, self.eod, teacher)

    def forward_backward(self, batches: Iterator[dict], num_microbatches: int) -> LossSums:
        self.optimizer.zero_grad(set_to_none=True)
        self.ddp.train()
        k, sums = self._k(), torch.zeros(4, dtype=torch.float64)
        for index in range(num_microbatches):
            last = index == num_microbatches - 1
            with self.ddp.no_sync() if not last else contextlib.nullcontext():
                objective, micro_sums, kl = self._micro_batch(next(batches), k, training=True)
                (objective / num_microbatches).backward()
            sums += micro_sums
            self._kl += kl
        return LossSums.from_tensor(sums)

    def optimizer_step(self) -> Tuple[bool, float]:
        params = self.model.trainable_parameters()
        clip = self.cfg.optim.clip_grad if self.cfg.optim.clip_grad > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        if not math.isfinite(grad_norm):  # as megatron's optimizer: a non-finite gradient is not applied
            self.optimizer.zero_grad(set_to_none=True)
            return False, grad_norm
        self.optimizer.step()
        self.step += 1
        self._set_lr()
        return True, grad_norm

    def skip_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def evaluate(self, batches: List[dict]) -> LossSums:
        sums = torch.zeros(4, dtype=torch.float64)
        self.ddp.eval()
        try:
            with torch.no_grad():
                for batch in batches:
                    sums += self._micro_batch(batch, self.cfg.focus.k, training=False)[1]
        finally:
            self.ddp.train()
        return LossSums.from_tensor(sums)

    # ------------------------------------------------------------ schedule, state, numbers

    def _set_lr(self) -> None:
        lr = cosine_lr(self.step, self.cfg.optim.lr, self.cfg.optim.min_lr, self.steps.warmup, self.steps.decay_end)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def schedule_state(self) -> dict:
        return {"num_steps": self.step}

    def load_schedule_state(self, state: dict) -> None:
        self.step = int(state.get("num_steps", 0))
        self._set_lr()

    def base_record(self) -> dict:
        return {"path": self.base_dir, "sha256": self.base_sha256, "step": self.base_ckpt.step}

    def save(self, directory: str) -> None:
        """Rank 0 writes the adapter file and the optimizer state (identical on every rank after DDP's all-reduce)."""
        if dist.get_rank() != 0:
            return
        from safetensors.torch import save_file

        from nucleotron.infer.focus_io import save_adapter

        os.makedirs(os.path.join(directory, "focus"), exist_ok=True)
        save_adapter(self.model, os.path.join(directory, ADAPTER_FILE), base=self.base_record())
        state = self.optimizer.state_dict()
        tensors = {f"{index}/{key}": value.detach().cpu().contiguous()
                   for index, entry in state["state"].items() for key, value in entry.items()}
        groups = [{k: v for k, v in group.items()} for group in state["param_groups"]]
        save_file(tensors, os.path.join(directory, OPTIMIZER_FILE),
                  metadata={"param_groups": json.dumps(groups), "names": json.dumps(self.names)})

    def _read_adapter(self, directory: str) -> Tuple[dict, dict]:
        from nucleotron.infer.focus_io import adapter_base, read_adapter

        path = os.path.join(directory, ADAPTER_FILE)
        if not os.path.isfile(path):
            raise ckpt.CheckpointError(f"{directory} holds no {ADAPTER_FILE}: it was not written by FOCUS training "
                                       f"(`nucleotron focus train`); use another run.dir or checkpoint.init_from")
        tensors, saved_cfg = read_adapter(path)
        mine, theirs = asdict(self.cfg.focus), asdict(saved_cfg)
        differing = [f"focus.{f.name}: checkpoint {theirs[f.name]!r}, config {mine[f.name]!r}"
                     for f in fields(saved_cfg) if f.name not in RUNTIME_FOCUS_KEYS + ("base_checkpoint",)
                     and theirs[f.name] != mine[f.name]]
        if differing:
            raise ConfigError(f"{path} was trained with other FOCUS settings ({'; '.join(differing)}); continue "
                              f"with the checkpoint's focus.* values or use a new run.dir")
        base = adapter_base(path) or {}
        if base.get("sha256") != self.base_sha256:
            raise ConfigError(f"{path} was trained on the frozen checkpoint {base.get('path')} (sha256 "
                              f"{str(base.get('sha256'))[:12]}...), but focus.base_checkpoint={self.base_dir} has "
                              f"other content (sha256 {self.base_sha256[:12]}...); pass the checkpoint it was "
                              f"trained on, or use a new run.dir")
        return tensors, base

    def load(self, directory: str) -> None:
        from safetensors import safe_open

        tensors, _ = self._read_adapter(directory)
        self.model.load_adapter_state_dict({k: v.to(device()) for k, v in tensors.items()})
        with safe_open(os.path.join(directory, OPTIMIZER_FILE), framework="pt") as handle:
            metadata = handle.metadata()
            flat = {key: handle.get_tensor(key) for key in handle.keys()}
        if json.loads(metadata["names"]) != self.names:
            raise ConfigError(f"{directory}: the optimizer state belongs to other adapter tensors; use a new run.dir")
        state: Dict[int, dict] = {}
        for key, value in flat.items():
            index, name = key.split("/", 1)
            state.setdefault(int(index), {})[name] = value.to(device()) if name != "step" else value
        self.optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
        self._set_lr()

    def load_weights(self, directory: str) -> None:
        """checkpoint.init_from: start from another FOCUS run's adapter (fresh optimizer and schedule)."""
        tensors, _ = self._read_adapter(directory)
        self.model.load_adapter_state_dict({k: v.to(device()) for k, v in tensors.items()})

    def parameters_finite(self) -> bool:
        bad = torch.zeros(1, device=device())
        if not all(torch.isfinite(p).all() for p in self.model.trainable_parameters()):
            bad += 1
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(bad)
        return bool(bad.item() == 0)

    def statistics(self) -> Dict[str, float]:
        """focus/kl: mean KL(base || focus) per base position over the steps since the last log line (with a
        teacher, i.e. focus.distill_kl > 0), the fidelity the adapter is trained for."""
        kl = self._kl.to(device())
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(kl)
        self._kl = torch.zeros(2, dtype=torch.float64)
        return {"focus/kl": float(kl[0] / kl[1])} if float(kl[1]) > 0 else {}

    def flops_per_token(self, seq_len: int) -> float:
        """Forward over 1 + 1/k positions per base plus a backward through the activations only (the frozen weights
        get no gradients): about 2/3 of pretraining's 6N-style count, plus a forward (1/3) for the teacher."""
        from nucleotron.model.flops import training_flops_per_token

        full = training_flops_per_token(self.cfg.model, seq_len)
        teacher = 1.0 / 3.0 if self.cfg.focus.distill_kl > 0 else 0.0
        return full * ((2.0 / 3.0) * (1.0 + 1.0 / self.cfg.focus.k) + teacher)

    def shutdown(self) -> None:
        destroy_distributed()

