"""megatron-core runs on a CUDA-less machine through nucleotron's CPU mode (gloo, fp32)."""
import pytest
import torch

from distributed import run_distributed
from megatron_workers import (expert_parallel_forward_backward, finalized_forward_backward, forward_backward,
                              schedule_forward_backward, train_steps)
from nucleotron.configs import load_config
from nucleotron.model.params import count_parameters

TINY = "configs/models/tiny.yaml"  # dense, GQA, one Gengram layer (layer 2 of 4)
NO_GENGRAM = ["model.gengram.layers=[]"]
MOE = ["model.moe.num_experts=4", "model.moe.top_k=2", "model.moe.ffn_hidden_size=32"]
MLA = ["model.attention=mla", "model.mla.q_lora_rank=24", "model.mla.kv_lora_rank=16", "model.mla.qk_head_dim=8",
       "model.mla.qk_pos_emb_head_dim=8", "model.mla.v_head_dim=16"]


@pytest.mark.parametrize("overrides", [NO_GENGRAM, [], MOE, MOE + ["model.moe.dispatcher=allgather"], MLA],
                         ids=["dense", "dense-gengram", "moe-alltoall-gengram", "moe-allgather-gengram",
                              "mla-gengram"])
def test_forward_backward_on_cpu(overrides):
    (result,) = run_distributed(1, forward_backward, TINY, overrides)
    assert torch.isfinite(torch.tensor(result["loss"]))
    assert result["all_grads"], "every parameter gets a finite gradient"
    cfg = load_config(TINY, overrides)
    assert result["num_params"] == count_parameters(cfg.model)["total_params"], "analytic count = built model"
    assert result["gengram_layers"] == cfg.model.gengram.layers, "Gengram exactly in the configured layers"


def test_tensor_parallel_2_matches_single_process():
    (single,) = run_distributed(1, forward_backward, TINY, [])
    tp2 = run_distributed(2, forward_backward, TINY, ["parallel.tensor=2"])
    assert [r["tp_world"] for r in tp2] == [2, 2]
    assert single["gengram_grads"], "the tiny config has a Gengram layer"
    for rank in tp2:
        assert rank["loss"] == pytest.approx(single["loss"], rel=1e-5, abs=1e-6)
        torch.testing.assert_close(rank["final_norm_grad"], single["final_norm_grad"], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(rank["output_grad"], single["output_grad"], rtol=1e-4, atol=1e-6)
        assert rank["gengram_grads"].keys() == single["gengram_grads"].keys()
        for name, grad in single["gengram_grads"].items():
            torch.testing.assert_close(rank["gengram_grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_sdpa_attention_matches_megatron_local_attention():
    (sdpa,) = run_distributed(1, forward_backward, TINY, ["model.attention_backend=sdpa"])
    (local,) = run_distributed(1, forward_backward, TINY, ["model.attention_backend=local"])
    assert sdpa["loss"] == pytest.approx(local["loss"], rel=1e-5)
    torch.testing.assert_close(sdpa["output_grad"], local["output_grad"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("overrides", [[], MOE], ids=["dense-gengram", "moe-gengram"])
def test_tiny_gengram_model_learns(overrides):
    (result,) = run_distributed(1, train_steps, TINY, overrides)
    losses = result["losses"]
    assert losses[-1] < 0.8 * losses[0], f"loss should fall on a repeated batch: {losses}"
    assert len(result["gate_means"]) == 1 and 0.0 < result["gate_means"][0] < 1.0


@pytest.mark.parametrize("recompute", ["none", "full"])
def test_pipeline_parallel_2_with_gengram_on_each_stage_matches_single_process(tmp_path, recompute):
    """PP=2 (1F1B over 4 micro-batches), Gengram at layer 2 (stage 0) and 3 (stage 1); with full recompute a
    layer's recompute runs after later micro-batches' forwards, so stale ids would show up as wrong gradients."""
    gengram = ["model.gengram.layers=[2,3]"]
    weights = str(tmp_path / "weights.pt")
    (single,) = run_distributed(1, schedule_forward_backward, TINY, gengram, weights, True)
    pp2 = run_distributed(2, schedule_forward_backward, TINY,
                          gengram + ["parallel.pipeline=2", f"model.recompute={recompute}"], weights, False)
    assert len(single["losses"]) == 4
    assert pp2[1]["losses"] == pytest.approx(single["losses"], rel=1e-5)
    stage_grads = {**pp2[0]["gengram_grads"], **pp2[1]["gengram_grads"]}
    assert {k.split(".")[0] for k in pp2[0]["gengram_grads"]} == {"layer2"}
    assert {k.split(".")[0] for k in pp2[1]["gengram_grads"]} == {"layer3"}
    assert stage_grads.keys() == single["gengram_grads"].keys()
    for name, grad in single["gengram_grads"].items():
        torch.testing.assert_close(stage_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_expert_parallel_2_with_gengram_matches_single_process(tmp_path):
    """EP=2 (alltoall dispatcher, 2 of 4 experts per rank) against one process holding all experts. Both ranks run
    the same batch, so every expert gets its tokens from both ranks: twice the single-process gradient, which
    megatron's DDP scales back by 1/data-parallel size."""
    weights = str(tmp_path / "weights.pt")
    moe = MOE + ["model.moe.dispatcher=alltoall", "model.gengram.layers=[2,3]"]
    (single,) = run_distributed(1, expert_parallel_forward_backward, TINY, moe, weights, True)
    ep2 = run_distributed(2, expert_parallel_forward_backward, TINY, moe + ["parallel.expert=2"], weights, False)
    assert [r["ep_world"] for r in ep2] == [2, 2]
    assert single["gengram_grads"] and len(single["expert_grads"]) == 4 * 4 * 2  # layers x experts x (fc1, fc2)
    for rank in ep2:
        assert rank["loss"] == pytest.approx(single["loss"], rel=1e-5, abs=1e-6)
        for kind in ("gengram_grads", "router_grads"):
            assert rank[kind].keys() == single[kind].keys()
            for name, grad in single[kind].items():
                torch.testing.assert_close(rank[kind][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    experts = {**ep2[0]["expert_grads"], **ep2[1]["expert_grads"]}
    assert experts.keys() == single["expert_grads"].keys()
    assert not ep2[0]["expert_grads"].keys() & ep2[1]["expert_grads"].keys(), "each expert on one rank"
    for name, grad in single["expert_grads"].items():
        torch.testing.assert_close(experts[name] / 2, grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("overrides", [[], MOE + ["model.gengram.layers=[1,4]", "model.gengram.window=9",
                                                  "model.gengram.reset_window_at_eod=true"]],
                         ids=["dense-gengram", "moe-gengram-eod-reset"])
def test_sequence_parallel_tp2_matches_single_process(overrides):
    """TP=2 with sequence parallelism: each rank holds half the sequence (32 positions), so Gengram reads the ids
    before its slice and the conv takes 18 positions from the other rank; megatron's DDP + finalize_model_grads
    sum the Gengram gradients over the TP group. Also runs MoE with TP, which megatron allows only with SP."""
    (single,) = run_distributed(1, finalized_forward_backward, TINY, overrides)
    sp = run_distributed(2, finalized_forward_backward, TINY,
                         overrides + ["parallel.tensor=2", "parallel.sequence_parallel=true"])
    assert [r["tp_world"] for r in sp] == [2, 2]
    assert single["gengram_grads"]
    for rank in sp:
        assert all(rank["gengram_marked"]), "every Gengram parameter is marked for the TP gradient all-reduce"
        assert rank["loss"] == pytest.approx(single["loss"], rel=1e-5, abs=1e-6)
        torch.testing.assert_close(rank["final_norm_grad"], single["final_norm_grad"], rtol=1e-4, atol=1e-6)
        assert rank["gengram_grads"].keys() == single["gengram_grads"].keys()
        for name, grad in single["gengram_grads"].items():
            torch.testing.assert_close(rank["gengram_grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
