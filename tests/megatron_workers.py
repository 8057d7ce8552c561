"""Per-rank bodies of the megatron-core CPU tests (run in spawned gloo processes by tests/distributed.py)."""
from __future__ import annotations

import torch


def forward_backward(config_path: str, overrides, seq_len: int = 64, batch: int = 2):
    """Build the model on this rank, run one forward+backward on a fixed batch, return loss and gradients.

    Gradients of TP-sharded weights are gathered to full size so results compare across TP sizes.
    """
    from megatron.core import parallel_state

    from nucleotron.configs import load_config
    from nucleotron.model.gpt import build_gpt_model
    from nucleotron.train.parallel import destroy_distributed, init_distributed

    cfg = load_config(config_path, list(overrides))
    init_distributed(cfg.parallel, seed=1234)
    torch.manual_seed(42)  # same init stream on every rank and every TP size (CPU init builds full master weights)
    model = build_gpt_model(cfg)
    ids = torch.randint(0, 8, (batch, seq_len), generator=torch.Generator().manual_seed(7))
    positions = torch.arange(seq_len).expand(batch, -1)
    loss = model(ids, positions, None, labels=ids).float().mean()
    loss.backward()
    tp_world = parallel_state.get_tensor_model_parallel_world_size()
    output_grad = model.output_layer.weight.grad  # vocab-sharded [vocab/TP, hidden]
    if tp_world > 1:
        shards = [torch.empty_like(model.output_layer.weight.grad) for _ in range(tp_world)]
        torch.distributed.all_gather(shards, model.output_layer.weight.grad.contiguous(),
                                     group=parallel_state.get_tensor_model_parallel_group())
        output_grad = torch.cat(shards, dim=0)
    result = {
        "loss": loss.item(),
        "final_norm_grad": model.decoder.final_layernorm.weight.grad.clone(),
        "output_grad": output_grad.clone(),
        "num_params": sum(p.numel() for p in model.parameters()),
        "all_grads": all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters()),
        "tp_world": tp_world,
    }
    destroy_distributed()
    return result
