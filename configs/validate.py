"""Checks a typed config for what its types cannot say: choices, ranges and cross-section divisibility.

Every message names the dotted key and says what is allowed, so the user can fix the YAML or override.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

from .schema import NucleotronConfig

MAX_GENGRAM_ORDER = 6  # 5**6 = 15,625 table rows; the spec defines orders 1..6

CHOICES = {
    "model.arch": ("gpt", "hnet"),
    "data.verify": ("sampled", "full"),
    "model.attention": ("standard", "mla"),
    "model.attention_backend": ("auto", "flash", "sdpa", "local"),
    "model.recompute": ("none", "selective", "full"),
    "model.moe.dispatcher": ("alltoall", "allgather"),
    "model.gengram.init": ("reference", "engram"),
    "train.precision": ("bf16", "fp32"),
    "train.bad_loss": ("skip", "stop"),
    "logging.wandb_mode": ("online", "offline"),
    "focus.raw_visibility": ("window", "kmer"),
    "focus.summary_loss": ("next_base", "none"),
    "focus.attention_kernel": ("auto", "sdpa"),
}

POSITIVE_INTS = (
    "run.seed", "data.seq_len", "model.num_layers", "model.hidden_size", "model.num_attention_heads",
    "model.ffn_hidden_size", "model.vocab_size", "model.gengram.table_dim", "model.gengram.conv_kernel",
    "parallel.tensor", "parallel.pipeline", "parallel.expert", "parallel.context",
    "train.micro_batch_size", "train.global_batch_size", "train.log_every", "train.eval_every",
    "train.eval_steps", "train.max_consecutive_skips", "checkpoint.every", "checkpoint.keep", "model.mla.kv_lora_rank", "model.mla.qk_head_dim",
    "model.mla.qk_pos_emb_head_dim", "model.mla.v_head_dim", "focus.k", "focus.window",
)

# key -> (low, low_included, high, high_included, null_allowed); every value must also be finite, so inf and nan
# (which pass a plain `x > 0`) fail at load instead of poisoning the weights
NUMBER_RANGES = {
    "data.num_workers": (0, True, None, False, False),
    "data.soft_masked_loss_weight": (0, True, 1, True, False),
    "model.rope_base": (0, False, None, False, False),
    "model.norm_eps": (0, False, None, False, False),
    "model.init_std": (0, False, None, False, False),
    "model.gengram.table_lr_mult": (0, False, None, False, False),
    "model.moe.aux_loss_coeff": (0, True, None, False, False),
    "model.moe.z_loss_coeff": (0, True, None, False, False),
    "optim.lr": (0, False, None, False, False),
    "optim.min_lr": (0, True, None, False, False),
    "optim.weight_decay": (0, True, None, False, False),
    "optim.adam_beta1": (0, True, 1, False, False),
    "optim.adam_beta2": (0, True, 1, False, False),
    "optim.adam_eps": (0, False, None, False, False),
    "optim.clip_grad": (0, True, None, False, False),
    "schedule.warmup_fraction": (0, True, 1, True, False),
    "schedule.decay_fraction": (0, True, 1, True, False),
    "train.loss_spike_factor": (1, False, None, False, True),
    "train.peak_tflops": (0, False, None, False, True),
    "focus.distill_kl": (0, True, None, False, False),
}


# model.te spellings -> setting: YAML and dotted overrides read on/off as booleans, which reach a str field as True/False
TE_SETTINGS = {"auto": "auto", "on": "on", "True": "on", "off": "off", "False": "off"}


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and what is allowed."""


def _get(cfg: NucleotronConfig, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _range_problem(key: str, value, bounds: Tuple[float, bool, Optional[float], bool, bool]) -> Optional[str]:
    low, low_in, high, high_in, nullable = bounds
    if value is None and nullable:
        return None
    inside = (value is not None and math.isfinite(value) and (value >= low if low_in else value > low)
              and (high is None or (value <= high if high_in else value < high)))
    if inside:
        return None
    if high is None:
        allowed = f"{'>=' if low_in else '>'} {low}"
    else:
        allowed = f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
    return f"{key}={value} must be a finite number {allowed}" + (" (or null)" if nullable else "")


def config_problems(cfg: NucleotronConfig) -> List[str]:
    """All problems found, each one line naming the key; empty when the config is usable."""
    problems: List[str] = []
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            problems.append(f"{key}={value!r} is not one of: {', '.join(allowed)}")
    if str(cfg.model.te) not in TE_SETTINGS:
        problems.append(f"model.te={cfg.model.te!r} is not one of: auto, on, off")
    for key in POSITIVE_INTS:
        value = _get(cfg, key)
        if value < 1:
            problems.append(f"{key}={value} must be a positive integer")
    for key, bounds in NUMBER_RANGES.items():
        problem = _range_problem(key, _get(cfg, key), bounds)
        if problem:
            problems.append(problem)
    if problems:  # the divisibility checks below assume positive sizes
        return problems

    m, p = cfg.model, cfg.parallel
    if m.arch == "hnet":  # the GPT-only checks below then see untouched GPT defaults
        problems += _hnet_problems(cfg)
    groups = m.num_query_groups if m.num_query_groups is not None else m.num_attention_heads
    if groups < 1 or m.num_attention_heads % groups:
        problems.append(
            f"model.num_query_groups={m.num_query_groups} must divide model.num_attention_heads="
            f"{m.num_attention_heads} (null for MHA)")
    if m.kv_channels is None and m.attention == "standard" and m.hidden_size % m.num_attention_heads:
        problems.append(
            f"model.hidden_size={m.hidden_size} is not divisible by model.num_attention_heads="
            f"{m.num_attention_heads}; change one, or set model.kv_channels (the head dim)")
    if m.num_attention_heads % p.tensor:
        problems.append(
            f"model.num_attention_heads={m.num_attention_heads} is not divisible by parallel.tensor={p.tensor}; "
            f"use a tensor-parallel size that divides the head count")
    elif m.attention == "standard" and groups % p.tensor:
        problems.append(
            f"model.num_query_groups={groups} is not divisible by parallel.tensor={p.tensor}")
    if m.ffn_hidden_size % p.tensor:
        problems.append(f"model.ffn_hidden_size={m.ffn_hidden_size} is not divisible by parallel.tensor={p.tensor}")
    if m.num_layers % p.pipeline:
        problems.append(
            f"model.num_layers={m.num_layers} is not divisible by parallel.pipeline={p.pipeline}")
    if p.context > 1 and cfg.data.seq_len % (2 * p.context):
        problems.append(
            f"data.seq_len={cfg.data.seq_len} is not divisible by 2*parallel.context={2 * p.context} "
            f"(context parallel splits each sequence into 2*CP chunks)")
    if p.sequence_parallel and p.tensor == 1:
        problems.append("parallel.sequence_parallel=true needs parallel.tensor > 1")
    if p.sequence_parallel and cfg.data.seq_len % p.tensor:
        problems.append(f"data.seq_len={cfg.data.seq_len} is not divisible by parallel.tensor={p.tensor} "
                        f"(sequence parallelism splits each sequence across tensor-parallel ranks)")

    moe = m.moe
    if moe.num_experts < 0:
        problems.append(f"model.moe.num_experts={moe.num_experts} must be 0 (dense) or positive")
    elif moe.num_experts > 0:
        if p.tensor > 1 and not p.sequence_parallel:
            problems.append(f"parallel.tensor={p.tensor} with a MoE model needs parallel.sequence_parallel=true "
                            f"(megatron-core requires it)")
        if not 1 <= moe.top_k <= moe.num_experts:
            problems.append(f"model.moe.top_k={moe.top_k} must be between 1 and model.moe.num_experts={moe.num_experts}")
        if moe.num_experts % p.expert:
            problems.append(
                f"model.moe.num_experts={moe.num_experts} is not divisible by parallel.expert={p.expert}")
        if moe.ffn_hidden_size is not None and moe.ffn_hidden_size < 1:
            problems.append(f"model.moe.ffn_hidden_size={moe.ffn_hidden_size} must be positive (or null)")
    elif p.expert > 1:
        problems.append(f"parallel.expert={p.expert} needs a MoE model (model.moe.num_experts > 0)")

    g = m.gengram
    bad_layers = [x for x in g.layers if not 1 <= x <= m.num_layers]
    if bad_layers:
        problems.append(
            f"model.gengram.layers has {bad_layers}: layers are 1-based and must lie in 1..{m.num_layers}")
    if len(set(g.layers)) != len(g.layers):
        problems.append(f"model.gengram.layers={list(g.layers)} repeats a layer")
    if not g.orders or any(not 1 <= n <= MAX_GENGRAM_ORDER for n in g.orders) or len(set(g.orders)) != len(g.orders):
        problems.append(
            f"model.gengram.orders={list(g.orders)} must be distinct k-mer orders in 1..{MAX_GENGRAM_ORDER}")
    if g.window is not None and g.window < 1:
        problems.append(f"model.gengram.window={g.window} must be >= 1, or null for no-window mode")
    if g.conv_dilation is not None and g.conv_dilation < 1:
        problems.append(f"model.gengram.conv_dilation={g.conv_dilation} must be >= 1, or null for max(orders)")
    if g.layers and p.context > 1:
        problems.append(f"parallel.context={p.context}: Gengram layers do not support context parallelism; "
                        f"use parallel.context=1 (or model.gengram.layers=[])")
    if g.layers and p.sequence_parallel and p.tensor > 1 and g.orders:
        reach = (g.conv_kernel - 1) * (g.conv_dilation or max(g.orders))
        if cfg.data.seq_len // p.tensor < reach:
            problems.append(f"data.seq_len={cfg.data.seq_len} / parallel.tensor={p.tensor} leaves fewer positions "
                            f"per rank than the Gengram conv's reach ({reach}) under sequence parallelism")

    t = cfg.train
    if t.global_batch_size % t.micro_batch_size:
        problems.append(
            f"train.global_batch_size={t.global_batch_size} is not divisible by train.micro_batch_size="
            f"{t.micro_batch_size}")
    for key in ("train.max_steps", "train.max_tokens", "train.stop_at_step", "model.kv_channels",
                "model.mla.q_lora_rank"):
        value = _get(cfg, key)
        if value is not None and value < 1:
            problems.append(f"{key}={value} must be positive (or null)")
    s = cfg.schedule
    if s.warmup_fraction + s.decay_fraction > 1:
        problems.append(
            f"schedule.warmup_fraction={s.warmup_fraction} and schedule.decay_fraction={s.decay_fraction} "
            f"must add up to at most 1")
    o = cfg.optim
    if o.min_lr > o.lr:
        problems.append(f"optim.min_lr={o.min_lr} must not exceed optim.lr={o.lr}")
    problems += _focus_problems(cfg)
    return problems


def _hnet_problems(cfg: NucleotronConfig) -> List[str]:
    """The model.hnet.* settings of an H-Net (model.arch=hnet): a layout that parses, one value per stage."""
    from nucleotron.model.hnet.layout import parse_stack, stage_layouts

    h, p, problems = cfg.model.hnet, cfg.parallel, []
    try:
        layouts = stage_layouts(h.layout)
    except ValueError as err:
        return [str(err)]
    stages = len(layouts)
    for key in ("d_model", "d_intermediate", "num_heads", "rotary_dim", "window", "lr_multipliers"):
        if len(getattr(h, key)) != stages:
            problems.append(f"model.hnet.{key}={list(getattr(h, key))} needs one value per stage ({stages} for "
                            f"layout {h.layout})")
    if len(h.target_ratios) != stages - 1 or any(not n > 1 for n in h.target_ratios):
        problems.append(f"model.hnet.target_ratios={list(h.target_ratios)} needs one ratio > 1 per routing stage "
                        f"({stages - 1} for layout {h.layout})")
    if problems:
        return problems
    for s, stacks in enumerate(layouts):
        blocks = [b for stack in stacks for b in parse_stack(stack)]
        d, heads = h.d_model[s], h.num_heads[s]
        if s and d < h.d_model[s - 1]:
            problems.append(f"model.hnet.d_model={list(h.d_model)} must not shrink inward (stage {s})")
        if any(b.mixer == "mamba2" for b in blocks) and (h.ssm.expand * d) % h.ssm.headdim:
            problems.append(f"model.hnet.ssm.expand={h.ssm.expand} x model.hnet.d_model[{s}]={d} is not divisible "
                            f"by model.hnet.ssm.headdim={h.ssm.headdim}")
        if any(b.mixer == "attention" for b in blocks):
            if heads < 1 or d % heads:
                problems.append(f"model.hnet.num_heads[{s}]={heads} must divide model.hnet.d_model[{s}]={d}")
            elif h.rotary_dim[s] % 2 or not 0 <= h.rotary_dim[s] <= d // heads:
                problems.append(f"model.hnet.rotary_dim[{s}]={h.rotary_dim[s]} must be even and at most the head "
                                f"dim {d // heads}")
        if any(b.mlp for b in blocks) and h.d_intermediate[s] < 1:
            problems.append(f"model.hnet.d_intermediate[{s}]={h.d_intermediate[s]} must be positive: stage {s} has "
                            f"upper-case (MLP) blocks")
        if h.window[s] < -1:
            problems.append(f"model.hnet.window[{s}]={h.window[s]} must be -1 (full causal) or >= 0")
    if any(not m > 0 for m in h.lr_multipliers):
        problems.append(f"model.hnet.lr_multipliers={list(h.lr_multipliers)} must be positive")
    if not h.ratio_loss_weight >= 0 or not h.init_std > 0:
        problems.append(f"model.hnet.ratio_loss_weight={h.ratio_loss_weight} must be >= 0 and "
                        f"model.hnet.init_std={h.init_std} > 0")
    for key in ("d_state", "d_conv", "expand", "headdim", "chunk_size"):
        if getattr(h.ssm, key) < 1:
            problems.append(f"model.hnet.ssm.{key}={getattr(h.ssm, key)} must be a positive integer")
    if (p.tensor, p.pipeline, p.expert, p.context) != (1, 1, 1, 1) or p.sequence_parallel:
        problems.append("model.arch=hnet trains data-parallel through DeepSpeed ZeRO: set parallel.tensor, "
                        "parallel.pipeline, parallel.expert and parallel.context to 1 and parallel.sequence_parallel "
                        "to false (use parallel.zero_stage to shard optimizer state, gradients or parameters)")
    if p.zero_stage not in (0, 1, 2, 3):
        problems.append(f"parallel.zero_stage={p.zero_stage} is not one of: 0, 1, 2, 3")
    return problems


def _focus_problems(cfg: NucleotronConfig) -> List[str]:
    """The focus.* settings (they only matter to `nucleotron focus`, but a typo should fail at load)."""
    f, problems = cfg.focus, []
    if f.summary_memory is not None and f.summary_memory < 1:
        problems.append(f"focus.summary_memory={f.summary_memory} must be >= 1 (or null to keep every summary)")
    bad = [x for x in f.adapter_layers if not 1 <= x <= cfg.model.num_layers]
    if bad or len(set(f.adapter_layers)) != len(f.adapter_layers):
        problems.append(f"focus.adapter_layers={list(f.adapter_layers)} must be distinct 1-based layers in "
                        f"1..{cfg.model.num_layers} ([] = all)")
    if not f.adapter_params or not set(f.adapter_params) <= {"q", "k", "v", "o"}:
        problems.append(f"focus.adapter_params={list(f.adapter_params)} must be a non-empty subset of q, k, v, o")
    if f.summary_token_id < 0:   # below model.vocab_size too: checked when an adapter is built on a model
        problems.append(f"focus.summary_token_id={f.summary_token_id} must be a vocabulary id >= 0; pick an id the "
                        f"packs never use")
    if any(k < 1 for k in f.k_sampling):
        problems.append(f"focus.k_sampling={list(f.k_sampling)} must hold positive integers ([] = always focus.k)")
    return problems


def validate(cfg: NucleotronConfig, source: str = "config") -> NucleotronConfig:
    """Raise ConfigError listing every problem, prefixed with where the config came from."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError(f"{source}: invalid configuration:\n  - " + "\n  - ".join(problems))
    return cfg
