"""FOCUS on tiny megatron-core models (CPU or GPU): inert when off, parallel == streaming, cache size, training."""
import os
import sys

import pytest
import torch

from nucleotron.configs import load_config
from nucleotron.infer.focus_stream import FocusStreamer
from nucleotron.model.focus import FocusModel, focus_loss

TINY = "configs/models/tiny.yaml"  # GQA (4 heads, 2 groups), Gengram in layer 2
VOCAB = {"PAD": 0, "C": 5, "G": 6, "T": 7, "A": 8, "N": 9, "EOD": 12}
BASES = [VOCAB[b] for b in "ACGT"]
SMALL = ["model.num_layers=2", "model.attention_backend=sdpa", "focus.k=4", "focus.window=16",
         "focus.attention_kernel=sdpa"]
VARIANTS = {
    "mha-dense-r2": ["model.num_query_groups=null", "model.gengram.layers=[]"],
    "gqa-gengram-r2-last2": ["focus.summary_memory=2"],
    "gqa-gengram-r1": ["focus.raw_visibility=kmer"],
    "moe-r2-qkvo-layer2": ["model.moe.num_experts=4", "model.moe.top_k=2", "model.moe.ffn_hidden_size=32",
                           "focus.adapter_params=[q,k,v,o]", "focus.adapter_layers=[2]"],
}


@pytest.fixture(scope="module")
def megatron_state():
    """megatron-core's parallel state in this process (one rank); environment and threads restored afterwards."""
    import nucleotron.kernels  # noqa: F401  (loads the modules whose dispatch flag is switched below)
    from nucleotron.train.parallel import destroy_distributed, init_distributed

    # Gengram's PyTorch path on CPU, as CPU training runs take it (the Triton interpreter is ~10x slower)
    kernels = [m for name, m in list(sys.modules.items()) if name.startswith("nucleotron.kernels")
               and getattr(m, "INTERPRETING", None) is not None]
    env, threads, flags = dict(os.environ), torch.get_num_threads(), [m.INTERPRETING for m in kernels]
    for module in kernels:
        module.INTERPRETING = False
    init_distributed(load_config(TINY).parallel, seed=1234)
    yield
    destroy_distributed()
    for module, flag in zip(kernels, flags):
        module.INTERPRETING = flag
    os.environ.clear()
    os.environ.update(env)
    torch.set_num_threads(threads)


def build(overrides, perturb=True):
    """(cfg, frozen base, FocusModel) with adapters moved off their base copies, so summaries really differ."""
    from nucleotron.model.gpt import build_gpt_model

    cfg = load_config(TINY, SMALL + list(overrides))
    torch.manual_seed(0)
    base = build_gpt_model(cfg, vocab=VOCAB)
    model = FocusModel(base, cfg.focus)
    if perturb:
        with torch.no_grad():
            for p in model.trainable_parameters():
                p.add_(0.05 * torch.randn_like(p))
    return cfg, base, model


def dna(batch, length, seed=3, device="cpu"):
    picks = torch.randint(0, 4, (batch, length), generator=torch.Generator().manual_seed(seed))
    return torch.tensor(BASES)[picks].to(device)


def device_of(model):
    return next(model.parameters()).device


def test_adapter_off_is_bit_identical_to_the_frozen_base(megatron_state):
    from nucleotron.model.gpt import build_gpt_model

    cfg = load_config(TINY, SMALL)
    torch.manual_seed(0)
    base = build_gpt_model(cfg, vocab=VOCAB).eval()
    for p in base.parameters():
        p.requires_grad_(False)  # megatron takes its frozen-weight linear path: compare like with like
    ids = dna(2, 40, device=device_of(base))
    positions = torch.arange(40, device=ids.device).expand_as(ids)
    with torch.no_grad():
        reference = base(ids, positions, None)
        before = {name: t.clone() for name, t in base.state_dict().items() if torch.is_tensor(t)}
        model = FocusModel(base, cfg.focus)
        for p in model.trainable_parameters():
            p.add_(1.0)
        assert torch.equal(model.base_logits(ids), reference)
    after = {name: t for name, t in base.state_dict().items() if torch.is_tensor(t)}
    assert after.keys() == before.keys(), "wrapping renames nothing in the base checkpoint"
    assert all(torch.equal(after[name], before[name]) for name in before)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parallel_forward_equals_streaming_with_eviction(megatron_state, variant):
    cfg, _, model = build(VARIANTS[variant])
    ids = dna(2, 70, device=device_of(model))  # 4 full windows of 16 bases and a partial one
    with torch.no_grad():
        parallel, layout = model(ids)
    streamer = FocusStreamer(model)
    pieces = [5, 11, 1, 20, 33]  # cut anywhere: pieces cross window ends and k-mers
    starts = [sum(pieces[:i]) for i in range(len(pieces))]
    streamed = torch.cat([streamer.feed(ids[:, s:s + n]) for s, n in zip(starts, pieces)], dim=1)
    torch.testing.assert_close(streamed, parallel[:, ~layout.is_summary], rtol=0, atol=1e-5)
    base = model.base_logits(ids)
    assert (parallel[:, ~layout.is_summary][:, 16:] - base[:, 16:]).abs().max() > 1e-3, \
        "after the first window FOCUS differs from the base model (the check above is not vacuous)"


def test_uncompressed_streaming_equals_the_base_model(megatron_state):
    _, _, model = build([])
    ids = dna(1, 50, device=device_of(model))
    streamer = FocusStreamer(model, compress=False)
    streamed = torch.cat([streamer.feed(ids[:, :7]), streamer.feed(ids[:, 7:30]), streamer.feed(ids[:, 30:])], 1)
    with torch.no_grad():
        torch.testing.assert_close(streamed, model.base_logits(ids), rtol=0, atol=1e-5)
    assert streamer.cache.entries() == 50


@pytest.mark.parametrize("memory", [None, 2])
def test_cache_size_after_each_base(megatron_state, memory):
    cfg, _, model = build(["model.gengram.layers=[]", "focus.window=12",
                           f"focus.summary_memory={'null' if memory is None else memory}"], perturb=False)
    k, W = cfg.focus.k, cfg.focus.window
    ids = dna(1, 40, device=device_of(model))
    streamer = FocusStreamer(model)
    for L in range(1, 41):
        streamer.feed(ids[:, L - 1:L])
        window_bases = L - (L // W) * W
        window_summaries = L // k - (L // W) * W // k
        if memory is None:
            assert streamer.cache.entries() == L // k + window_bases, f"after {L} bases"
        else:
            earlier = min(memory, (L // W) * W // k)
            assert streamer.cache.entries() == earlier + window_summaries + window_bases, f"after {L} bases"
            assert streamer.cache.entries() <= memory + window_bases + window_summaries
        assert streamer.cache.entries() <= L / k + W
    layers = cfg.model.num_layers
    per_entry = 2 * layers * (cfg.model.num_query_groups or cfg.model.num_attention_heads) * \
        (cfg.model.hidden_size // cfg.model.num_attention_heads) * 4
    assert streamer.cache.kv_bytes() == streamer.cache.entries() * per_entry


def test_training_steps_change_only_adapter_parameters(megatron_state):
    import random

    from nucleotron.model.focus.train import adapter_optimizer, train_step

    _, base, model = build(["focus.distill_kl=1.0", "focus.adapter_params=[q,k,v,o]", "focus.k_sampling=[4,8]"],
                           perturb=False)
    frozen = {name: p.detach().clone() for name, p in base.named_parameters()}
    adapter = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    assert adapter and all(name.startswith(("summary_embedding", "qkv_adapters", "proj_adapters")) for name in adapter)
    optimizer, schedule = adapter_optimizer(model, lr=1e-2, warmup_steps=1)
    ids = dna(2, 48, device=device_of(model))
    rng = random.Random(0)
    losses = [train_step(model, optimizer, ids, schedule, rng) for _ in range(4)]
    assert all(loss.kl is not None for loss in losses)
    assert all(p.grad is None for p in base.parameters())
    for name, p in base.named_parameters():
        assert torch.equal(p, frozen[name]), f"frozen {name} changed"
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, adapter[name]), f"adapter {name} did not train"
    with torch.no_grad():
        before = focus_loss(*build(["focus.adapter_params=[q,k,v,o]"], perturb=False)[2](ids), ids).next_base
        after = focus_loss(*model(ids), ids).next_base
    assert after < before, "the next-base loss falls on the repeated batch"


def test_greedy_generation_matches_the_parallel_forward_and_never_emits_summaries(megatron_state):
    cfg, _, model = build([])
    prompt = dna(1, 13, device=device_of(model))
    generated = FocusStreamer(model).generate(prompt, 8, allowed_ids=BASES, temperature=0)
    sequence = prompt
    with torch.no_grad():
        for _ in range(8):
            logits, layout = model(sequence)
            last = logits[:, ~layout.is_summary][:, -1]
            token = torch.tensor(BASES, device=last.device)[last[:, BASES].argmax(-1)]
            sequence = torch.cat([sequence, token[:, None]], dim=1)
    assert torch.equal(generated, sequence[:, 13:])
    assert cfg.focus.summary_token_id not in generated.tolist()[0]


@pytest.mark.gpu
def test_flex_attention_block_mask_equals_dense_mask_on_gpu(megatron_state):
    _, _, model = build(VARIANTS["gqa-gengram-r2-last2"])
    ids = dna(2, 300, device=device_of(model))
    with torch.no_grad():
        dense, _ = model(ids)
        model.cfg.attention_kernel = "auto"
        flex, _ = model(ids)
    torch.testing.assert_close(flex, dense, rtol=1e-4, atol=1e-4)


def test_adapter_file_round_trip_and_bad_files(megatron_state, tmp_path):
    from nucleotron.configs import ConfigError
    from nucleotron.infer.focus_io import read_adapter, save_adapter

    cfg, _, model = build(["focus.adapter_params=[q,o]"])
    path = str(tmp_path / "focus.safetensors")
    save_adapter(model, path)
    tensors, saved_cfg = read_adapter(path)
    assert saved_cfg == cfg.focus
    _, _, fresh = build(["focus.adapter_params=[q,o]"], perturb=False)
    fresh.load_adapter_state_dict(tensors)
    ids = dna(1, 40, device=device_of(model))
    with torch.no_grad():
        assert torch.equal(fresh(ids)[0], model(ids)[0])
    _, _, other = build([], perturb=False)
    with pytest.raises(ValueError, match="adapter state does not match this model and focus config: missing"):
        other.load_adapter_state_dict(tensors)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="junk.safetensors: not a readable FOCUS adapter file"):
        read_adapter(str(tmp_path / "junk.safetensors"))


def test_eval_reports_zero_distance_before_the_first_summary_and_counts_kv(megatron_state):
    from nucleotron.infer.focus_eval import fidelity_report, memory_point

    cfg, _, model = build(["model.gengram.layers=[]", "focus.k=32", "focus.window=64"])
    device = device_of(model)
    short = [dna(1, 31, seed=s, device=device)[0] for s in (1, 2)]  # no summary yet: FOCUS is the base model
    report = fidelity_report(model, short)
    assert report["positions"] == 62 and len(report["per_position"]["l1"]["median"]) == 31
    assert all(v["median"] < 1e-6 for v in report["overall"].values()), report["overall"]
    longer = fidelity_report(model, [dna(1, 100, device=device)[0]])
    assert max(longer["per_position"]["l1"]["median"][64:]) > 1e-4, "after a window end FOCUS differs"
    focus = memory_point(model, 100, True, 64, BASES, decode=3)
    full = memory_point(model, 100, False, 64, BASES, decode=3)
    assert focus["kv_entries_per_layer"] == 103 // 32 + (103 - 64)
    assert full["kv_entries_per_layer"] == full["max_kv_entries_per_layer"] == 103
    assert focus["max_kv_entries_per_layer"] == 64 + 2  # the first full window and its 2 summaries


def test_a_summary_id_outside_the_vocabulary_is_refused_when_the_adapter_is_built(megatron_state):
    from nucleotron.configs import ConfigError

    with pytest.raises(ConfigError, match=r"focus.summary_token_id=128 must lie in 0..127 \(the model's vocabulary\)"):
        build(["focus.summary_token_id=128"])

