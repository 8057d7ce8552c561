"""The typed configuration tree every room reads its part of.

YAML files in this folder and dotted command-line overrides are merged onto these dataclasses by
`nucleotron.configs.loader.load_config`; OmegaConf rejects unknown keys and wrong types, and
`nucleotron.configs.validate` checks what types cannot say (divisibility, ranges, choices).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class RunConfig:
    """Where a run lives and how it is seeded."""

    name: str = "nucleotron"
    dir: str = "runs/${run.name}"  # RUN_DIR: config.yaml, metrics.jsonl, checkpoints/ (a requeued job needs only this)
    seed: int = 1234


@dataclass
class DataConfig:
    """Token packs made by `nucleotron data prep`; the blend and vocabulary come from their manifest.json."""

    packs: Optional[str] = None
    seq_len: int = 8192  # training takes the pack's seq_len when packs are given
    num_workers: int = 2
    soft_masked_loss_weight: float = 1.0  # training-loss weight of soft-masked (repeat) bases; != 1 needs a pack
    # made with `data prep --soft-mask` (Savanna uses 0.1). Reported losses stay unweighted means over all bases.
    verify: str = "sampled"  # start-up pack check: sampled (sizes + checksums of sampled blocks, ~1 MiB read per
    # file) | full (every byte against the manifest's sha256; reads the whole pack). See `nucleotron data verify`.


@dataclass
class GengramConfig:
    """The Gengram layer (../shared/spec/gengram.md). Empty `layers` means no Gengram at all."""

    layers: List[int] = field(default_factory=list)  # 1-based global layer numbers, e.g. [3, 6, 10]
    orders: List[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6])  # k-mer orders n
    window: Optional[int] = 21  # W; null = no-window mode (L_n = 1)
    table_dim: int = 1024  # d: width of each k-mer table
    conv_kernel: int = 4
    conv_dilation: Optional[int] = None  # null = max(orders), as in the reference
    init: str = "reference"  # reference: tables N(0,1), torch defaults | engram: conv zero-init, small table std
    table_lr_mult: float = 1.0
    table_weight_decay: bool = True
    reset_window_at_eod: bool = False  # reset the window at EOD (use with a reset attention mask)


@dataclass
class MoEConfig:
    """Mixture of experts in every layer when num_experts > 0; dense MLP otherwise."""

    num_experts: int = 0
    top_k: int = 2
    ffn_hidden_size: Optional[int] = None  # expert FFN width; null = model.ffn_hidden_size
    aux_loss_coeff: float = 1e-3
    z_loss_coeff: float = 1e-3
    dispatcher: str = "alltoall"  # alltoall | allgather


@dataclass
class MLAConfig:
    """Multi-latent attention sizes, used when model.attention == 'mla'."""

    q_lora_rank: Optional[int] = None
    kv_lora_rank: int = 512
    qk_head_dim: int = 128
    qk_pos_emb_head_dim: int = 64
    v_head_dim: int = 128


@dataclass
class ModelConfig:
    """A GPT-style single-nucleotide decoder: RMSNorm, SwiGLU, RoPE, no biases, untied embeddings."""

    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    num_query_groups: Optional[int] = None  # null = MHA; fewer than heads = GQA
    kv_channels: Optional[int] = None  # head dim; null = hidden_size / heads
    ffn_hidden_size: int = 256  # dense SwiGLU width
    vocab_size: int = 128  # padded vocabulary; the pack manifest's ids must fit
    attention: str = "standard"  # standard (MHA/GQA) | mla
    attention_backend: str = "auto"  # auto | flash | sdpa | local
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.01
    recompute: str = "none"  # none | selective | full
    moe: MoEConfig = field(default_factory=MoEConfig)
    mla: MLAConfig = field(default_factory=MLAConfig)
    gengram: GengramConfig = field(default_factory=GengramConfig)


@dataclass
class ParallelConfig:
    """Model-parallel sizes; data parallel is whatever the world size leaves."""

    tensor: int = 1
    pipeline: int = 1
    expert: int = 1
    context: int = 1
    sequence_parallel: bool = False


@dataclass
class OptimConfig:
    """Adam with decoupled weight decay and global-norm clipping (the paper's settings by default)."""

    lr: float = 1e-4
    min_lr: float = 1e-5
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0


@dataclass
class ScheduleConfig:
    """Cosine decay with linear warmup, then flat at min_lr (fractions of the run's steps)."""

    warmup_fraction: float = 0.05
    decay_fraction: float = 0.8


@dataclass
class TrainConfig:
    micro_batch_size: int = 1
    global_batch_size: int = 1024  # sequences per optimizer step
    max_steps: Optional[int] = None
    max_tokens: Optional[int] = None  # token budget; used when max_steps is null
    stop_at_step: Optional[int] = None  # save and exit 0 at this step (a job's share of a longer run); null = off
    precision: str = "bf16"  # bf16 | fp32 (CPU mode always runs fp32)
    log_every: int = 10
    eval_every: int = 1000  # steps between validations; one always runs at the end
    eval_steps: int = 10  # validation size: this many global batches per group (human, non-human), fixed samples
    bad_loss: str = "skip"  # skip | stop: what a NaN/inf loss or a loss spike does (skipped steps are counted)
    loss_spike_factor: Optional[float] = None  # a loss above factor x the mean of the last 20 is a spike; null = off
    peak_tflops: Optional[float] = None  # per-device peak for MFU; null = known GPUs (H100/H200 bf16: 989)


@dataclass
class CheckpointConfig:
    every: int = 1000  # steps between saves; one is always written at the end
    keep: int = 3  # newest checkpoints kept; older ones are pruned


@dataclass
class LoggingConfig:
    wandb: bool = False
    wandb_project: str = "nucleotron"
    wandb_name: Optional[str] = None  # null = run.name
    wandb_tags: List[str] = field(default_factory=list)
    wandb_mode: str = "online"  # online | offline
    tensorboard: bool = False


@dataclass
class NucleotronConfig:
    """The whole tree: `nucleotron train --config FILE key.path=value ...` fills this."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
