"""The typed configuration tree every room reads its part of.

YAML files in this folder and dotted command-line overrides are merged onto these dataclasses by
`nucleotron.configs.loader.load_config`; OmegaConf rejects unknown keys and wrong types, and
`nucleotron.configs.validate` checks what types cannot say (divisibility, ranges, choices).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional


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
class HNetSSMConfig:
    """Mamba-2 settings of every H-Net stage (mamba_ssm's defaults; H-Net uses chunk 256)."""

    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    chunk_size: int = 256


@dataclass
class HNetConfig:
    """The H-Net / dnaHNet backbone (model.arch == 'hnet'); lists hold one value per stage, outermost first."""

    layout: List[Any] = field(default_factory=lambda: ["m4", ["T9"], "m4"])  # official DSL: m/M Mamba-2, t/T attention
    d_model: List[int] = field(default_factory=lambda: [256, 512])
    d_intermediate: List[int] = field(default_factory=lambda: [0, 1024])  # SwiGLU width of upper-case blocks
    num_heads: List[int] = field(default_factory=lambda: [8, 8])
    rotary_dim: List[int] = field(default_factory=lambda: [32, 32])
    window: List[int] = field(default_factory=lambda: [1023, -1])  # sliding attention window; -1 = full causal
    target_ratios: List[float] = field(default_factory=lambda: [3.0])  # N per routing stage (dnaHNet: 3, 2)
    ratio_loss_weight: float = 0.02  # alpha
    lr_multipliers: List[float] = field(default_factory=lambda: [2.0, 1.0])  # per stage, outer stages learn faster
    init_std: float = 0.02
    ssm: HNetSSMConfig = field(default_factory=HNetSSMConfig)


@dataclass
class ModelConfig:
    """A GPT-style single-nucleotide decoder: RMSNorm, SwiGLU, RoPE, no biases, untied embeddings."""

    arch: str = "gpt"  # gpt: megatron-core GPT family (the fields below) | hnet: H-Net (model.hnet; vocab_size, norm_eps)
    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    num_query_groups: Optional[int] = None  # null = MHA; fewer than heads = GQA
    kv_channels: Optional[int] = None  # head dim; null = hidden_size / heads
    ffn_hidden_size: int = 256  # dense SwiGLU width
    vocab_size: int = 128  # padded vocabulary; the pack manifest's ids must fit
    attention: str = "standard"  # standard (MHA/GQA) | mla
    attention_backend: str = "auto"  # auto | flash | sdpa | local
    te: str = "auto"  # TransformerEngine layers: auto (when it imports on a GPU) | on (required) | off (torch-native)
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.01
    recompute: str = "none"  # none | selective | full
    moe: MoEConfig = field(default_factory=MoEConfig)
    mla: MLAConfig = field(default_factory=MLAConfig)
    gengram: GengramConfig = field(default_factory=GengramConfig)
    hnet: HNetConfig = field(default_factory=HNetConfig)


@dataclass
class ParallelConfig:
    """Model-parallel sizes; data parallel is whatever the world size leaves."""

    tensor: int = 1
    pipeline: int = 1
    expert: int = 1
    context: int = 1
    sequence_parallel: bool = False
    zero_stage: int = 1  # DeepSpeed ZeRO stage 0-3 (model.arch=hnet trains through DeepSpeed)


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
    max_consecutive_skips: int = 20  # this many skipped steps in a row stop the run (exit 1): the model is broken
    peak_tflops: Optional[float] = None  # per-device peak for MFU; null = known GPUs (H100/H200 bf16: 989)


@dataclass
class CheckpointConfig:
    every: int = 1000  # steps between saves; one is always written at the end
    keep: int = 3  # newest checkpoints kept; older ones are pruned (never the newest verified one)
    init_from: Optional[str] = None  # start a new run from this checkpoint's weights (fresh optimizer and schedule)
    override_schedule: bool = False  # on resume, apply changed optim.lr/min_lr/weight_decay, schedule.*, max_steps
    allow_restart: bool = False  # start from step 0 although RUN_DIR/checkpoints holds only unusable checkpoints


@dataclass
class LoggingConfig:
    wandb: bool = False
    wandb_project: str = "nucleotron"
    wandb_name: Optional[str] = None  # null = run.name
    wandb_tags: List[str] = field(default_factory=list)
    wandb_mode: str = "online"  # online | offline
    tensorboard: bool = False


@dataclass
class FocusConfig:
    """FOCUS summary-token context compression (model/focus, ../shared/reference/focus-hnet.md section 1): a summary
    token after every k bases, an adapter trained on a frozen checkpoint, streaming with an O(L/k + W) KV cache."""

    k: int = 100  # bases per summary token
    window: int = 1024  # W in bases: base K/V are evicted at the end of each window of W bases
    raw_visibility: str = "window"  # window (R2: all earlier positions of the window + earlier summaries) | kmer (R1)
    summary_memory: Optional[int] = None  # null = keep every summary; N = keep the last N from earlier windows
    adapter_layers: List[int] = field(default_factory=list)  # 1-based layers with adapter weights; [] = all
    adapter_params: List[str] = field(default_factory=lambda: ["q", "k", "v"])  # subset of q, k, v, o
    init_from_base: bool = True  # adapter projections start as copies of the frozen ones
    summary_token_id: int = 126  # vocabulary id of the summary token (unused by the packs; must be < model.vocab_size)
    k_sampling: List[int] = field(default_factory=list)  # training draws k from this list per step; [] = always k
    summary_loss: str = "next_base"  # next_base: summary positions predict the next real base too | none
    distill_kl: float = 0.0  # weight of KL(frozen base || focus) on base positions (an extension, not in the paper)
    attention_kernel: str = "auto"  # auto: flex_attention block masks on CUDA, boolean-mask SDPA otherwise | sdpa
    base_checkpoint: Optional[str] = None  # set: `nucleotron train` trains a FOCUS adapter on this frozen checkpoint


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
    focus: FocusConfig = field(default_factory=FocusConfig)
