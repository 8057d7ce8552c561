"""megatron-core runs on a CUDA-less machine through nucleotron's CPU mode (gloo, fp32)."""
import pytest
import torch

from distributed import run_distributed
from megatron_workers import forward_backward
from nucleotron.configs import load_config
from nucleotron.model.params import count_parameters

TINY = "configs/models/tiny.yaml"
NO_GENGRAM = ["model.gengram.layers=[]"]  # the Gengram layer joins the backbone in a later step
MOE = ["model.moe.num_experts=4", "model.moe.top_k=2", "model.moe.ffn_hidden_size=32"]
MLA = ["model.attention=mla", "model.mla.q_lora_rank=24", "model.mla.kv_lora_rank=16", "model.mla.qk_head_dim=8",
       "model.mla.qk_pos_emb_head_dim=8", "model.mla.v_head_dim=16"]


@pytest.mark.parametrize("overrides", [[], MOE, MOE + ["model.moe.dispatcher=allgather"], MLA],
                         ids=["dense", "moe-alltoall", "moe-allgather", "mla"])
def test_forward_backward_on_cpu(overrides):
    (result,) = run_distributed(1, forward_backward, TINY, NO_GENGRAM + overrides)
    assert torch.isfinite(torch.tensor(result["loss"]))
    assert result["all_grads"], "every parameter gets a finite gradient"
    cfg = load_config(TINY, NO_GENGRAM + overrides)
    assert result["num_params"] == count_parameters(cfg.model)["total_params"], "analytic count = built model"


def test_tensor_parallel_2_matches_single_process():
    (single,) = run_distributed(1, forward_backward, TINY, NO_GENGRAM)
    tp2 = run_distributed(2, forward_backward, TINY, NO_GENGRAM + ["parallel.tensor=2"])
    assert [r["tp_world"] for r in tp2] == [2, 2]
    for rank in tp2:
        assert rank["loss"] == pytest.approx(single["loss"], rel=1e-5, abs=1e-6)
        torch.testing.assert_close(rank["final_norm_grad"], single["final_norm_grad"], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(rank["output_grad"], single["output_grad"], rtol=1e-4, atol=1e-6)


def test_sdpa_attention_matches_megatron_local_attention():
    (sdpa,) = run_distributed(1, forward_backward, TINY, NO_GENGRAM + ["model.attention_backend=sdpa"])
    (local,) = run_distributed(1, forward_backward, TINY, NO_GENGRAM + ["model.attention_backend=local"])
    assert sdpa["loss"] == pytest.approx(local["loss"], rel=1e-5)
    torch.testing.assert_close(sdpa["output_grad"], local["output_grad"], rtol=1e-4, atol=1e-6)
