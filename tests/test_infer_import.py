"""`nucleotron import gengram-megatron` on a synthetic checkpoint in the public Megatron `torch` layout.

The synthetic files use the public names and shapes (tiny sizes): PP=2 stages in mp_rank_00_000/001 with
stage-local layer numbers, TransformerEngine's fused input norm (linear_qkv.layer_norm_weight), grouped-GEMM experts
(experts.linear_fc1.weight<e>), and Gengram parameters (embeddings.<i>.weight, key_proj, value_proj, norm_q, norm_k,
short_conv.conv.weight) in every layer although only layers 2 and 3 use them. The reference is the plain Hugging
Face model assembled by hand from the same tensors.
"""
import pytest
import torch

from nucleotron.configs import load_config

CONFIG = "configs/models/tiny.yaml"
OVERRIDES = ["model.moe.num_experts=4", "model.moe.top_k=2", "model.moe.ffn_hidden_size=32",
             "model.gengram.layers=[2,3]"]


def public_layer(g, cfg):
    """One layer's public parameters (every layer has Gengram's, active or not)."""
    m = cfg.model
    hidden, heads, groups = m.hidden_size, m.num_attention_heads, m.num_query_groups
    head_dim, ffn, experts = hidden // heads, m.moe.ffn_hidden_size, m.moe.num_experts
    layer = {
        "self_attention.linear_qkv.layer_norm_weight": 1 + 0.1 * torch.randn(hidden, generator=g),
        "self_attention.linear_qkv.weight": 0.1 * torch.randn((heads + 2 * groups) * head_dim, hidden, generator=g),
        "self_attention.linear_proj.weight": 0.1 * torch.randn(hidden, heads * head_dim, generator=g),
        "pre_mlp_layernorm.weight": 1 + 0.1 * torch.randn(hidden, generator=g),
        "mlp.router.weight": torch.randn(experts, hidden, generator=g),
        "gengram.key_proj.weight": 0.1 * torch.randn(hidden, 6 * m.gengram.table_dim, generator=g),
        "gengram.value_proj.weight": 0.1 * torch.randn(hidden, 6 * m.gengram.table_dim, generator=g),
        "gengram.norm_q.weight": 1 + 0.1 * torch.randn(hidden, generator=g),
        "gengram.norm_k.weight": 1 + 0.1 * torch.randn(hidden, generator=g),
        "gengram.short_conv.conv.weight": 0.3 * torch.randn(hidden, 1, m.gengram.conv_kernel, generator=g),
    }
    for n in range(1, 7):
        layer[f"gengram.embeddings.{n - 1}.weight"] = torch.randn(5 ** n, m.gengram.table_dim, generator=g)
    for e in range(experts):
        layer[f"mlp.experts.linear_fc1.weight{e}"] = 0.1 * torch.randn(2 * ffn, hidden, generator=g)
        layer[f"mlp.experts.linear_fc2.weight{e}"] = 0.1 * torch.randn(hidden, ffn, generator=g)
    return layer


@pytest.fixture(scope="module")
def public(tmp_path_factory):
    """(checkpoint dir, {global layer number: public layer dict}, embedding, final norm, output layer)."""
    cfg = load_config(CONFIG, OVERRIDES)
    g = torch.Generator().manual_seed(7)
    layers = {number: public_layer(g, cfg) for number in range(1, cfg.model.num_layers + 1)}
    embedding = torch.randn(cfg.model.vocab_size, cfg.model.hidden_size, generator=g)
    final_norm = 1 + 0.1 * torch.randn(cfg.model.hidden_size, generator=g)
    output = 0.1 * torch.randn(cfg.model.vocab_size, cfg.model.hidden_size, generator=g)
    root = tmp_path_factory.mktemp("public")
    per_stage = cfg.model.num_layers // 2
    for stage in range(2):
        state = {f"decoder.layers.{local}.{name}": tensor for local in range(per_stage)
                 for name, tensor in layers[stage * per_stage + local + 1].items()}
        state.update({"embedding.word_embeddings.weight": embedding} if stage == 0 else
                     {"decoder.final_layernorm.weight": final_norm, "output_layer.weight": output})
        (root / f"mp_rank_00_00{stage}").mkdir()
        torch.save({"model": state, "iteration": 1000, "checkpoint_version": 3.0},
                   root / f"mp_rank_00_00{stage}" / "model_optim_rng.pt")
    return root, layers, embedding, final_norm, output


def hand_assembled(cfg, layers, embedding, final_norm, output):
    """The HF model of modeling_nucleotron.py with the public tensors put in place by hand."""
    from nucleotron.data_prep.tokens import VOCAB
    from nucleotron.infer.modeling_nucleotron import NucleotronForCausalLM, NucleotronLMConfig

    m = cfg.model
    heads, groups, head_dim = m.num_attention_heads, m.num_query_groups, m.hidden_size // m.num_attention_heads
    config = NucleotronLMConfig(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers, num_attention_heads=heads,
        num_key_value_heads=groups, intermediate_size=m.ffn_hidden_size, num_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32, gengram_layers=[2, 3], gengram_table_dim=m.gengram.table_dim, gengram_window=21,
        symbol_ids=[VOCAB[b] for b in "ACGTN"], eos_token_id=VOCAB["EOD"])
    model = NucleotronForCausalLM(config).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(embedding)
        model.model.norm.weight.copy_(final_norm)
        model.lm_head.weight.copy_(output)
        for number, public in layers.items():
            layer = model.model.layers[number - 1]
            layer.input_layernorm.weight.copy_(public["self_attention.linear_qkv.layer_norm_weight"])
            qkv = public["self_attention.linear_qkv.weight"]
            for group in range(groups):  # megatron's fused rows per group: its query heads, one key, one value
                rows = qkv[group * (heads // groups + 2) * head_dim:(group + 1) * (heads // groups + 2) * head_dim]
                per = heads // groups * head_dim
                layer.self_attn.q_proj.weight[group * per:(group + 1) * per] = rows[:per]
                layer.self_attn.k_proj.weight[group * head_dim:(group + 1) * head_dim] = rows[per:per + head_dim]
                layer.self_attn.v_proj.weight[group * head_dim:(group + 1) * head_dim] = rows[per + head_dim:]
            layer.self_attn.o_proj.weight.copy_(public["self_attention.linear_proj.weight"])
            layer.post_attention_layernorm.weight.copy_(public["pre_mlp_layernorm.weight"])
            layer.mlp.router.weight.copy_(public["mlp.router.weight"])
            for e, expert in enumerate(layer.mlp.experts):
                fc1 = public[f"mlp.experts.linear_fc1.weight{e}"]
                expert.gate_proj.weight.copy_(fc1[:32])
                expert.up_proj.weight.copy_(fc1[32:])
                expert.down_proj.weight.copy_(public[f"mlp.experts.linear_fc2.weight{e}"])
            if layer.gengram is not None:
                for n, table in enumerate(layer.gengram.tables):
                    table.copy_(public[f"gengram.embeddings.{n}.weight"])
                for name in ("key_proj", "value_proj", "norm_q", "norm_k"):
                    getattr(layer.gengram, name).weight.copy_(public[f"gengram.{name}.weight"])
                layer.gengram.short_conv.weight.copy_(public["gengram.short_conv.conv.weight"])
    return model


def test_public_checkpoint_converts_to_the_hand_assembled_model(public, tmp_path):
    from nucleotron.data_prep.tokens import VOCAB
    from nucleotron.infer.import_gengram import main
    from nucleotron.infer.loading import load_model

    root, layers, embedding, final_norm, output = public
    out = tmp_path / "imported"
    assert main(["gengram-megatron", str(root), "--config", CONFIG, "--out", str(out), *OVERRIDES]) == 0
    cfg = load_config(CONFIG, OVERRIDES)
    reference = hand_assembled(cfg, layers, embedding, final_norm, output)
    imported = load_model(str(out), device="cpu")
    assert imported.identity["kind"] == "weights" and imported.identity["step"] == 0
    ids = torch.randint(0, 4, (2, 64), generator=torch.Generator().manual_seed(1)) + VOCAB["C"]  # C, G, T, A
    ids[0, 5] = VOCAB["N"]
    with torch.no_grad():
        expected, got = reference(ids).logits, imported.model(ids).logits
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= 1e-6
    assert [n for n, layer in enumerate(imported.model.model.layers, 1) if layer.gengram is not None] == [2, 3]


class Opaque:
    """An arbitrary class: unpickling it would run code a file could choose."""


def test_pickled_objects_are_refused_with_a_way_out(tmp_path, capsys):
    from nucleotron.infer.import_gengram import main

    stage = tmp_path / "ckpt" / "mp_rank_00_000"
    stage.mkdir(parents=True)
    path = stage / "model_optim_rng.pt"
    torch.save({"model": {}, "args": Opaque()}, path)  # stands for any object weights_only refuses
    assert main(["gengram-megatron", str(tmp_path / "ckpt"), "--config", CONFIG, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err  # after the progress bar's output
    assert f"nucleotron import gengram-megatron: {path} holds pickled Python objects besides tensors" in err
    assert f"torch.save(torch.load('{path}', weights_only=False)['model'], 'model_only.pt')" in err
    assert not (tmp_path / "o").exists()
