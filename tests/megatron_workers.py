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
    from nucleotron.configs import load_config
    from nucleotron.model.gpt import build_gpt_model
    from nucleotron.train.parallel import init_distributed

    cfg = load_config(config_path, list(overrides))
    init_distributed(cfg.parallel, seed=1234)
    torch.manual_seed(42)  # same init stream on every rank and every TP size (CPU init builds full master weights)
    return cfg, build_gpt_model(cfg, vocab=VOCAB)


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
    gengram_grads = {f"layer{number}.{name}": p.grad.clone()
                     for number, module in model.gengram_modules() for name, p in module.named_parameters()}
    result = {
        "loss": loss.item(),
        "final_norm_grad": model.decoder.final_layernorm.weight.grad.clone(),
        "output_grad": output_grad.clone(),
        "gengram_grads": gengram_grads,
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
