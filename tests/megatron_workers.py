"""Per-rank bodies of the megatron-core CPU tests (run in spawned gloo processes by tests/distributed.py)."""
from __future__ import annotations

import torch

# The pack manifest's vocabulary (public Gengram tokenizer ids); the model reads it for the Gengram symbol map.
VOCAB = {"PAD": 0, "C": 5, "G": 6, "T": 7, "A": 8, "N": 9, "EOD": 12}
DNA_IDS = torch.tensor([VOCAB[t] for t in ("A", "C", "G", "T", "A", "C", "G", "T", "N", "EOD")])


def dna_batch(batch: int, seq_len: int, seed: int = 7) -> torch.Tensor:
    """Random bases with a few N and EOD tokens, identical on every rank."""
    picks = torch.randint(0, len(DNA_IDS), (batch, seq_len), generator=torch.Generator().manual_seed(seed))
    return DNA_IDS[picks]


def _setup(config_path: str, overrides):
    from megatron.core import parallel_state

    from nucleotron.configs import load_config
    from nucleotron.model.gpt import build_gpt_model
    from nucleotron.train.parallel import init_distributed

    cfg = load_config(config_path, list(overrides))
    init_distributed(cfg.parallel, seed=1234)
    torch.manual_seed(42)  # same init stream on every rank and every TP size (CPU init builds full master weights)
    model = build_gpt_model(cfg, vocab=VOCAB, pre_process=parallel_state.is_pipeline_first_stage(),
                            post_process=parallel_state.is_pipeline_last_stage())
    return cfg, model


def _gengram_grads(model) -> dict:
    """Gradients of every Gengram parameter on this stage, keyed 'layer<global number>.<name>'."""
    return {f"layer{number}.{name}": p.grad.clone()
            for number, module in model.gengram_modules() for name, p in module.named_parameters()}


def _load_stage_weights(model, full_state: dict, layers_per_stage: int) -> None:
    """Copy a single-process model's weights into this pipeline stage (local layer i = global layer offset + i)."""
    from megatron.core import parallel_state

    offset = parallel_state.get_pipeline_model_parallel_rank() * layers_per_stage
    own = model.state_dict()
    for name in own:
        if name.startswith("decoder.layers."):
            _, _, index, rest = name.split(".", 3)
            source = f"decoder.layers.{int(index) + offset}.{rest}"
        else:
            source = name
        if torch.is_tensor(own[name]):
            own[name] = full_state[source]
    model.load_state_dict(own)


def schedule_forward_backward(config_path: str, overrides, weights_path: str, save_weights: bool,
                              micro_batches: int = 4, seq_len: int = 64, batch: int = 2):
    """One training step through megatron's pipeline schedule (1F1B for PP>1) over several micro-batches.

    The single-process run saves its weights to `weights_path`; pipeline runs load them stage by stage, so both
    start from the same model. Returns per-micro-batch losses (last stage) and Gengram gradients by global layer.
    """
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from nucleotron.train.parallel import destroy_distributed

    cfg, model = _setup(config_path, overrides)
    if save_weights:
        torch.save(model.state_dict(), weights_path)
    else:
        stages = parallel_state.get_pipeline_model_parallel_world_size()
        _load_stage_weights(model, torch.load(weights_path), cfg.model.num_layers // stages)
    batches = iter([dna_batch(batch, seq_len + 1, seed=100 + i) for i in range(micro_batches)])
    positions = torch.arange(seq_len).expand(batch, -1)

    def forward_step(data_iterator, model):
        ids = next(data_iterator)  # every stage reads the micro-batch: Gengram layers need its ids
        output = model(ids[:, :-1], positions, None, labels=ids[:, 1:])

        def loss_func(per_token_loss):
            loss = per_token_loss.float().mean()
            return loss, {"loss": loss.detach()}

        return output, loss_func

    stats = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=batches, model=[model], num_microbatches=micro_batches,
        seq_length=seq_len, micro_batch_size=batch, forward_only=False)
    losses = [float(s["loss"]) for s in stats] if parallel_state.is_pipeline_last_stage() else []
    destroy_distributed()
    return {"losses": losses, "gengram_grads": _gengram_grads(model)}


def forward_backward(config_path: str, overrides, seq_len: int = 64, batch: int = 2):
    """Build the model on this rank, run one forward+backward on a fixed batch, return loss and gradients.

    Gradients of TP-sharded weights are gathered to full size so results compare across TP sizes.
    """
    from megatron.core import parallel_state

    from nucleotron.train.parallel import destroy_distributed

    cfg, model = _setup(config_path, overrides)
    ids = dna_batch(batch, seq_len)
    positions = torch.arange(seq_len).expand(batch, -1)
    loss = model(ids, positions, None, labels=ids).float().mean()
    loss.backward()
    tp_world = parallel_state.get_tensor_model_parallel_world_size()
    output_grad = model.output_layer.weight.grad  # vocab-sharded [vocab/TP, hidden]
    if tp_world > 1:
        shards = [torch.empty_like(output_grad) for _ in range(tp_world)]
        torch.distributed.all_gather(shards, output_grad.contiguous(),
                                     group=parallel_state.get_tensor_model_parallel_group())
        output_grad = torch.cat(shards, dim=0)
    result = {
        "loss": loss.item(),
        "final_norm_grad": model.decoder.final_layernorm.weight.grad.clone(),
        "output_grad": output_grad.clone(),
        "gengram_grads": _gengram_grads(model),
        "gengram_layers": [number for number, _ in model.gengram_modules()],
        "num_params": sum(p.numel() for p in model.parameters()),
        "all_grads": all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters()),
        "tp_world": tp_world,
    }
    destroy_distributed()
    return result


def train_steps(config_path: str, overrides, steps: int = 8, seq_len: int = 64, batch: int = 4):
    """A few Adam steps on one fixed batch: the losses, which must fall if the model can learn."""
    from nucleotron.train.parallel import destroy_distributed

    _, model = _setup(config_path, overrides)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    ids = dna_batch(batch, seq_len)
    positions = torch.arange(seq_len).expand(batch, -1)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model(ids[:, :-1], positions[:, :-1], None, labels=ids[:, 1:]).float().mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    gate_means = [float(module.last_gate_mean) for _, module in model.gengram_modules()]
    destroy_distributed()
    return {"losses": losses, "gate_means": gate_means}


def optimizer_groups(config_path: str, overrides, steps: int):
    """The trainer's megatron optimizer on a built model: each trainable parameter's group settings (lr and weight
    decay after `steps` scheduler steps, the group's max_lr), by parameter name."""
    from nucleotron.train.optimizer import build_optimizer, wrap_ddp
    from nucleotron.train.parallel import destroy_distributed

    cfg, model = _setup(config_path, overrides)
    names = {id(p): name for name, p in model.named_parameters()}
    ddp = wrap_ddp(model, cfg, distributed_optimizer=False)
    optimizer, scheduler = build_optimizer(ddp, cfg, total_steps=100, bf16=False, distributed_optimizer=False)
    scheduler.step(increment=steps)
    groups = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            groups[names[id(p)]] = {"lr": group["lr"], "weight_decay": group["weight_decay"],
                                    "max_lr": group["max_lr"]}
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters() if p.requires_grad}
    destroy_distributed()
    return {"groups": groups, "shapes": shapes, "lr": cfg.optim.lr, "weight_decay": cfg.optim.weight_decay}


def _expected_routing(router_input: torch.Tensor, router) -> dict:
    """The Switch load-balancing loss / coeff and the z-loss / coeff, computed here from the router's logits."""
    logits = (router_input.reshape(-1, router_input.shape[-1]).float() @ router.weight.float().t()).detach()
    experts, top_k = logits.shape[1], router.topk
    chosen = logits.topk(top_k, dim=1).indices
    tokens_per_expert = torch.zeros(experts).index_add_(0, chosen.reshape(-1), torch.ones(chosen.numel()))
    probs = logits.softmax(dim=1)
    tokens = logits.shape[0]
    aux = experts / (top_k * tokens * tokens) * (probs.sum(dim=0) * tokens_per_expert).sum()
    z = torch.logsumexp(logits, dim=1).square().mean()
    return {"aux_loss": float(aux), "z_loss": float(z), "load": (tokens_per_expert / tokens_per_expert.sum()).tolist()}


def routing_stats(config_path: str, overrides, seq_len: int = 64, batch: int = 2):
    """model_stats after training forwards on two batches, after a no-grad forward and after a reset, with the
    values recomputed independently from each router's input, and megatron's own tracker sums."""
    from megatron.core.transformer.moe.moe_utils import get_moe_layer_wise_logging_tracker
    from megatron.core.transformer.moe.router import TopKRouter

    from nucleotron.model.stats import model_stats, reset_model_stats
    from nucleotron.train.parallel import destroy_distributed

    get_moe_layer_wise_logging_tracker().clear()  # process-global: an earlier job in this worker filled it
    _, model = _setup(config_path, overrides)
    routers = {m.layer_number: m for m in model.modules() if isinstance(m, TopKRouter)}
    inputs = {}
    for number, router in routers.items():
        router.register_forward_hook(lambda m, args, out, number=number: inputs.__setitem__(number, args[0]))
    positions = torch.arange(seq_len).expand(batch, -1)
    result = {"train": [], "expected": [], "gate_means": []}
    for seed in (1, 2):
        ids = dna_batch(batch, seq_len, seed=seed)
        model(ids, positions, None, labels=ids).float().mean().backward()
        result["train"].append(model_stats(model))
        result["expected"].append({n: _expected_routing(inputs[n], routers[n]) for n in routers})
        result["gate_means"].append({n: float(g.last_gate_mean) for n, g in model.gengram_modules()})
    tracker = get_moe_layer_wise_logging_tracker()
    result["tracker"] = {name: entry["values"].tolist() for name, entry in tracker.items()}
    with torch.no_grad():
        model(ids, positions, None, labels=ids)
    result["no_grad"] = model_stats(model)
    reset_model_stats(model)
    result["after_reset"] = model_stats(model)
    destroy_distributed()
    return result


def _global_expert_name(name: str, offset: int) -> str:
    """'...local_experts.<i>.rest' on an expert-parallel rank -> the same name with the global expert index."""
    head, sep, tail = name.partition("local_experts.")
    if not sep:
        return name
    index, _, rest = tail.partition(".")
    return f"{head}{sep}{int(index) + offset}.{rest}"


def expert_parallel_forward_backward(config_path: str, overrides, weights_path: str, save_weights: bool,
                                     seq_len: int = 64, batch: int = 2):
    """One forward+backward on the same batch on every rank, from the single-process model's weights.

    Returns the loss and the gradients of the Gengram parameters, the routers and the experts; expert parameters
    are keyed by their global expert index so the ranks' dicts merge into the single-process one.
    """
    from megatron.core import parallel_state

    from nucleotron.train.parallel import destroy_distributed

    cfg, model = _setup(config_path, overrides)
    ep_world = parallel_state.get_expert_model_parallel_world_size()
    offset = parallel_state.get_expert_model_parallel_rank() * (cfg.model.moe.num_experts // ep_world)
    if save_weights:
        torch.save(model.state_dict(), weights_path)
    else:
        full, own = torch.load(weights_path), model.state_dict()
        model.load_state_dict({name: full[_global_expert_name(name, offset)] if torch.is_tensor(value) else value
                               for name, value in own.items()})
    ids = dna_batch(batch, seq_len)
    positions = torch.arange(seq_len).expand(batch, -1)
    loss = model(ids, positions, None, labels=ids).float().mean()
    loss.backward()
    result = {
        "loss": loss.item(),
        "ep_world": ep_world,
        "gengram_grads": _gengram_grads(model),
        "router_grads": {name: p.grad.clone() for name, p in model.named_parameters() if "router" in name},
        "expert_grads": {_global_expert_name(name, offset): p.grad.clone()
                         for name, p in model.named_parameters() if "local_experts" in name},
    }
    destroy_distributed()
    return result


def finalized_forward_backward(config_path: str, overrides, seq_len: int = 64, batch: int = 2):
    """forward_backward through megatron's DDP wrapper and finalize_model_grads, the way training reduces gradients
    (which, under sequence parallelism, sums the `sequence_parallel` parameters' gradients over the TP group).

    Returns the loss, the Gengram gradients, the final-norm gradient and which Gengram parameters are marked.
    """
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads

    from nucleotron.train.parallel import destroy_distributed

    _, model = _setup(config_path, overrides)
    ddp = DistributedDataParallel(model.config, DistributedDataParallelConfig(), model)
    ids = dna_batch(batch, seq_len)
    positions = torch.arange(seq_len).expand(batch, -1)
    loss = ddp(ids, positions, None, labels=ids).float().mean()
    loss.backward()
    finalize_model_grads([ddp])
    result = {
        "loss": loss.item(),
        "tp_world": parallel_state.get_tensor_model_parallel_world_size(),
        "gengram_grads": {f"layer{number}.{name}": p.main_grad.clone()
                          for number, module in model.gengram_modules() for name, p in module.named_parameters()},
        "final_norm_grad": model.decoder.final_layernorm.weight.main_grad.clone(),
        "gengram_marked": [getattr(p, "sequence_parallel", False)
                           for _, module in model.gengram_modules() for p in module.parameters()],
    }
    destroy_distributed()
    return result
