"""Layer spec chosen by what the machine has (model.te), and the torch-native grouped-GEMM experts against megatron's
SequentialMLP: same forward, same gradients, same checkpoint keys, with uneven and empty expert groups."""
import pytest
import torch

from distributed import run_distributed
from megatron_workers import VOCAB, dna_batch
from nucleotron.configs import ConfigError, load_config

TINY = "configs/models/tiny.yaml"  # GQA, one Gengram layer (layer 2 of 4)
MOE = ["model.moe.num_experts=4", "model.moe.top_k=2", "model.moe.ffn_hidden_size=32"]
# tokens per expert for the direct expert calls: uneven, one empty expert, none a multiple of the GEMM alignment
COUNTS = [5, 0, 23, 3]


def _grads(module) -> dict:
    return {name: p.grad.detach().float().cpu().clone() for name, p in module.named_parameters()}


def _expert_call(experts, x, probs, counts, dtype):
    """experts(x, tokens_per_expert, probs) in `dtype`; returns output and every gradient (input, probs, weights)."""
    experts.zero_grad(set_to_none=True)
    x, probs = x.to(dtype).detach().requires_grad_(), probs.detach().requires_grad_()
    out, bias = experts(x, torch.tensor(counts), probs)
    assert bias is None
    out.float().pow(2).sum().backward()
    return {"out": out.detach().float().cpu(), "x": x.grad.float().cpu(), "probs": probs.grad.float().cpu(),
            **_grads(experts)}


def experts_worker():
    """One gloo process: the tiny MoE model with grouped-GEMM experts and the same model with SequentialMLP."""
    from megatron.core.transformer.moe.experts import SequentialMLP

    import nucleotron.model.gpt as gpt
    from nucleotron.model.experts import GroupedGemmExperts, grouped_mm_works
    from nucleotron.train.parallel import destroy_distributed, init_distributed

    cfg = load_config(TINY, MOE + ["model.te=off"])
    init_distributed(cfg.parallel, seed=1234)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(42)
    native = gpt.build_gpt_model(cfg, vocab=VOCAB)
    gpt.GroupedGemmExperts = SequentialMLP  # the reference: megatron's local spec experts
    reference = gpt.build_gpt_model(cfg, vocab=VOCAB)
    gpt.GroupedGemmExperts = GroupedGemmExperts
    reference.load_state_dict(native.state_dict())
    result = {"expert_types": [type(m.decoder.layers[0].mlp.experts).__name__ for m in (native, reference)]}

    def keys(model):
        sharded = model.sharded_state_dict()
        return ({k: tuple(v.shape) for k, v in model.state_dict().items() if torch.is_tensor(v)},
                {v.key: (tuple(getattr(v, "global_shape", None) or v.data.shape), getattr(v, "global_offset", None))
                 for v in sharded.values() if hasattr(v, "key")})  # ShardedTensor or (SwiGLU fc1) factory

    result["keys"] = [keys(m) for m in (native, reference)]

    ids = dna_batch(2, 64).to(device)
    positions = torch.arange(64, device=device).expand(2, -1)
    for name, model in (("native", native), ("reference", reference)):
        loss = model(ids, positions, None, labels=ids).float().mean()
        loss.backward()
        result[name] = {"loss": loss.item(), **_grads(model)}

    # Direct calls with chosen token counts (the router rarely leaves an expert empty in a tiny batch).
    experts, sequential = native.decoder.layers[0].mlp.experts, reference.decoder.layers[0].mlp.experts
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(sum(COUNTS), cfg.model.hidden_size, generator=generator).to(device)
    probs = torch.rand(sum(COUNTS), generator=generator).to(device)
    result["calls"] = {name: _expert_call(module, x, probs, COUNTS, torch.float32)
                       for name, module in (("native", experts), ("reference", sequential))}
    # The torch._grouped_mm path (bf16, padded groups), where this torch runs it, against the fp32 reference
    # computed from the same bf16-rounded weights and inputs.
    result["bf16_grouped"] = grouped_mm_works(device, torch.bfloat16)
    if result["bf16_grouped"]:
        with torch.no_grad():
            for p in experts.parameters():
                p.copy_(p.to(torch.bfloat16).float())
        sequential.load_state_dict(experts.state_dict())
        reference_call = _expert_call(sequential, x.to(torch.bfloat16).float(), probs, COUNTS, torch.float32)
        experts.to(torch.bfloat16)
        result["bf16_calls"] = {"native": _expert_call(experts, x, probs, COUNTS, torch.bfloat16),
                                "reference": reference_call}
    destroy_distributed()
    return result


@pytest.fixture(scope="module")
def experts_run():
    (result,) = run_distributed(1, experts_worker)
    return result


def test_native_spec_uses_grouped_gemm_experts(experts_run):
    assert experts_run["expert_types"] == ["GroupedGemmExperts", "SequentialMLP"]


def test_checkpoint_keys_and_shapes_match_sequential_mlp(experts_run):
    native, reference = experts_run["keys"]
    assert native[0] == reference[0], "state_dict names and shapes"
    assert native[1] == reference[1], "sharded checkpoint keys, global shapes and offsets"
    assert any(".experts.linear_fc1.weight" in key for key in native[1])


def test_model_forward_and_every_gradient_match_sequential_mlp(experts_run):
    native, reference = experts_run["native"], experts_run["reference"]
    assert native["loss"] == pytest.approx(reference["loss"], rel=1e-6)
    assert native.keys() == reference.keys() and len(native) > 10
    for name, grad in reference.items():
        if name != "loss":
            torch.testing.assert_close(native[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_uneven_and_empty_expert_groups_match_sequential_mlp(experts_run):
    native, reference = experts_run["calls"]["native"], experts_run["calls"]["reference"]
    assert reference.keys() == native.keys()
    for name, value in reference.items():
        torch.testing.assert_close(native[name], value, rtol=1e-5, atol=1e-6, msg=name)
    empty = [name for name in native if name.startswith("local_experts.1.")]
    assert empty and all(torch.count_nonzero(native[name]) == 0 for name in empty), "no tokens, zero gradient"
    assert all(torch.count_nonzero(native[name]) > 0 for name in native if name.startswith("local_experts.2."))


def test_grouped_mm_bf16_path_matches_fp32_reference(experts_run):
    if not experts_run["bf16_grouped"]:
        pytest.skip("this torch build has no bf16 torch._grouped_mm on this device")
    native, reference = experts_run["bf16_calls"]["native"], experts_run["bf16_calls"]["reference"]
    for name, value in reference.items():
        scale = value.abs().max().clamp(min=1e-3)
        assert (native[name] - value).abs().max() <= 2e-2 * scale, name


# ---------------------------------------------------------------- spec selection (no model is built)


@pytest.fixture()
def machine(monkeypatch):
    """Set what the machine has: machine(cuda=..., te=...)."""
    import nucleotron.model.gpt as gpt

    def set_machine(cuda: bool, te: bool):
        monkeypatch.setattr(gpt.torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(gpt, "transformer_engine_importable", lambda: te)

    return set_machine


@pytest.mark.parametrize("cuda,te,setting,expected", [
    (False, False, "auto", False), (True, False, "auto", False), (False, True, "auto", False),
    (True, True, "auto", True), (True, True, "on", True), (True, True, "off", False), (False, False, "off", False),
])
def test_transformer_engine_only_when_it_imports_on_a_gpu(machine, cuda, te, setting, expected):
    from nucleotron.model.gpt import use_transformer_engine

    machine(cuda=cuda, te=te)
    assert use_transformer_engine(setting) is expected


@pytest.mark.parametrize("cuda,te,missing", [(True, False, "the transformer_engine package"),
                                             (False, True, "a CUDA GPU")])
def test_te_on_without_transformer_engine_or_gpu_is_a_clear_error(machine, cuda, te, missing):
    from nucleotron.model.gpt import use_transformer_engine

    machine(cuda=cuda, te=te)
    with pytest.raises(RuntimeError, match=rf"model.te=on needs TransformerEngine on a CUDA GPU, but this machine "
                                           rf"lacks {missing}.*model.te=auto or off"):
        use_transformer_engine("on")


def test_unknown_te_setting_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model.te='maybe' is not one of: auto, on, off"):
        load_config(TINY, ["model.te=maybe"])


@pytest.mark.parametrize("overrides,keys_map", [
    (MOE, {"pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"}),
    ([], {}),
])
def test_auto_with_te_on_a_gpu_builds_the_te_spec_with_gengram_layers(machine, monkeypatch, overrides, keys_map):
    """TE modules cannot be built here: megatron's TE spec function is replaced by a recorder returning a local
    spec, and the test checks what nucleotron asks of it and does with it."""
    import nucleotron.model.gpt as gpt
    from nucleotron.model.layer import GengramTransformerLayer
    from nucleotron.model.transformer_config import transformer_config

    calls = []

    def te_spec(**kwargs):
        calls.append(kwargs)
        return gpt.get_gpt_layer_local_spec(num_experts=kwargs["num_experts"])

    monkeypatch.setattr(gpt, "get_gpt_layer_with_transformer_engine_spec", te_spec)
    machine(cuda=True, te=True)
    cfg = load_config(TINY, overrides)
    te = gpt.use_transformer_engine(cfg.model.te)
    spec = gpt.layer_spec(cfg, VOCAB, te=te)
    moe = bool(overrides)
    assert te and calls == [dict(num_experts=4 if moe else None, moe_grouped_gemm=moe, multi_latent_attention=False,
                                 qk_layernorm=False)]
    assert spec.module is GengramTransformerLayer and spec.params["gengram"].layers == [2]
    assert spec.submodules.sharded_state_dict_keys_map == keys_map
    if moe:
        assert transformer_config(cfg.model, cfg.parallel, grouped_gemm=te).moe_grouped_gemm is True


def test_off_builds_the_native_spec_even_with_te(machine):
    import nucleotron.model.gpt as gpt
    from nucleotron.model.attention import SDPAAttention
    from nucleotron.model.experts import GroupedGemmExperts

    machine(cuda=True, te=True)
    cfg = load_config(TINY, MOE + ["model.te=off", "model.attention_backend=sdpa"])
    spec = gpt.layer_spec(cfg, VOCAB, te=gpt.use_transformer_engine(cfg.model.te))
    assert spec.submodules.mlp.submodules.experts.module is GroupedGemmExperts
    assert spec.submodules.self_attention.submodules.core_attention is SDPAAttention
