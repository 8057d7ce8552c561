"""megatron-core runs on a CUDA-less machine through nucleotron's CPU mode (gloo, fp32)."""
import pytest
import torch

from distributed import run_distributed
from megatron_workers import forward_backward, schedule_forward_backward, train_steps
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
