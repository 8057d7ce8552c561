"""Model FLOPs per token: an independent hand count for tiny configs, and how the count scales."""
import pytest

from nucleotron.configs import load_config
from nucleotron.model.flops import forward_flops_per_token, training_flops_per_token
from nucleotron.model.params import count_parameters

TINY = "configs/models/tiny.yaml"  # 4 layers, hidden 64, 4 heads (dim 16), 2 KV groups, FFN 128, vocab 128
MOE = ["model.moe.num_experts=4", "model.moe.top_k=2", "model.moe.ffn_hidden_size=32"]
MLA = ["model.attention=mla", "model.mla.q_lora_rank=24", "model.mla.kv_lora_rank=16", "model.mla.qk_head_dim=8",
       "model.mla.qk_pos_emb_head_dim=8", "model.mla.v_head_dim=16"]
SEQ = 256

# Multiply-adds per token, written out layer by layer (x2 = forward FLOPs, x3 = training).
GQA_PROJECTIONS = 64 * (4 + 2 * 2) * 16 + 4 * 16 * 64      # fused QKV (4 query heads, 2 KV groups) + output
MLA_PROJECTIONS = (64 * 24 + 24 * 4 * (8 + 8)              # q down + up (nope + rope dims)
                   + 64 * (16 + 8) + 16 * 4 * (8 + 16)      # kv down (+ rope key) + up (k nope + v)
                   + 4 * 16 * 64)                           # output
CORE = 4 * (SEQ // 2) * (16 + 16)                            # 4 heads x 128 keys x (QK^T dim 16 + PV dim 16)
DENSE_MLP = 64 * 128 * 2 + 128 * 64                          # SwiGLU: gate+up, down
MOE_MLP = 2 * (64 * 32 * 2 + 32 * 64) + 64 * 4               # top-2 experts of width 32 + router to 4 experts
LOGITS = 64 * 128
GENGRAM = 2 * (6 * 16) * 64 + 4 * 64                         # key and value projections from 6 orders x d=16, conv


def macs(projections: int, mlp: int) -> int:
    return 4 * (projections + CORE + mlp) + LOGITS + 1 * GENGRAM  # 4 layers, one Gengram layer


@pytest.mark.parametrize("overrides, expected_macs", [
    ([], macs(GQA_PROJECTIONS, DENSE_MLP)),
    (MOE, macs(GQA_PROJECTIONS, MOE_MLP)),
    (MLA, macs(MLA_PROJECTIONS, DENSE_MLP)),
], ids=["dense-gqa", "moe-gqa", "dense-mla"])
def test_matches_hand_count(overrides, expected_macs):
    cfg = load_config(TINY, overrides).model
    assert training_flops_per_token(cfg, SEQ) == 3 * 2 * expected_macs


def test_attention_term_is_linear_in_seq_len_and_the_rest_constant():
    cfg = load_config(TINY).model
    short, long = forward_flops_per_token(cfg, 1024), forward_flops_per_token(cfg, 4096)
    assert long["attention_core"] == 4 * short["attention_core"]
    for part in short.keys() - {"attention_core"}:
        assert long[part] == short[part], part
    step = training_flops_per_token(cfg, 2048) - training_flops_per_token(cfg, 1024)
    assert training_flops_per_token(cfg, 3072) - training_flops_per_token(cfg, 2048) == pytest.approx(step)


def test_gengram_and_moe_terms():
    no_gengram = load_config(TINY, ["model.gengram.layers=[]"]).model
    three = load_config(TINY, ["model.gengram.layers=[1,2,3]"]).model
    assert forward_flops_per_token(no_gengram, SEQ)["gengram"] == 0
    assert forward_flops_per_token(three, SEQ)["gengram"] == 3 * 2 * GENGRAM
    top1 = load_config(TINY, MOE + ["model.moe.top_k=1"]).model
    top2 = load_config(TINY, MOE).model
    assert forward_flops_per_token(top2, SEQ)["mlp"] == 2 * forward_flops_per_token(top1, SEQ)["mlp"]
    assert forward_flops_per_token(top2, SEQ)["router"] == 2 * 4 * 64 * 4


def test_10b_is_close_to_six_times_active_matmul_params():
    """Away from attention, training FLOPs ~ 6 x the active parameters that are matrix weights (the 6N rule)."""
    cfg = load_config("configs/models/gengram-10b.yaml").model
    counts = count_parameters(cfg)
    input_embedding = cfg.vocab_size * cfg.hidden_size
    tables = len(cfg.gengram.layers) * sum(5 ** n for n in cfg.gengram.orders) * cfg.gengram.table_dim
    matmul_params = counts["active_params"] - input_embedding - tables  # norms and conv are < 0.01%
    no_attention = training_flops_per_token(cfg, 8192) - 3 * forward_flops_per_token(cfg, 8192)["attention_core"]
    assert no_attention == pytest.approx(6 * matmul_params, rel=1e-3)
