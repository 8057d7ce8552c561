"""Every shipped model config loads, and its parameter counts land in the paper's ranges."""
from pathlib import Path

import pytest

from nucleotron.configs import load_config
from nucleotron.model.params import count_parameters, gengram_params

MODELS = Path(__file__).resolve().parents[1] / "configs" / "models"
YAMLS = sorted(p.relative_to(MODELS).as_posix() for p in MODELS.rglob("*.yaml"))
GRID = [f"{family}-{attention}.yaml" for family in ("dense-0.3b", "moe-1.2b") for attention in ("mha", "gqa", "mla")]

# Backbone (no Gengram) counts in billions: (total low, total high, active low, active high). The paper rounds:
# Dense "0.3B" (MLA's wide heads make it 0.41B), MoE "1.2B / 0.3B active", "10B / 2.87B active" (megatron counts
# 3.02B for the launch script's 8 KV groups).
BACKBONE_RANGES = {
    "dense-0.3b": (0.29, 0.42, 0.29, 0.42),
    "moe-1.2b": (1.2, 1.3, 0.33, 0.37),
    "gengram-10b": (10.0, 10.5, 2.85, 3.05),
}


def family(name: str) -> str:
    stem = Path(name).stem
    return next(f for f in BACKBONE_RANGES if stem.startswith(f))


@pytest.mark.parametrize("name", YAMLS)
def test_every_model_yaml_loads(name):
    load_config(MODELS / name)


# the paper's GPT families (dnaHNet presets and the tiny / quickstart models have no paper range)
PAPER_YAMLS = [n for n in YAMLS if any(Path(n).stem.startswith(f) for f in BACKBONE_RANGES)]


@pytest.mark.parametrize("name", PAPER_YAMLS)
def test_counts_in_paper_ranges(name):
    model = load_config(MODELS / name).model
    counts = count_parameters(model)
    low, high, active_low, active_high = BACKBONE_RANGES[family(name)]
    backbone = counts["total_params"] - counts["gengram_params"]
    active = counts["active_params"] - counts["gengram_params"]
    assert low <= backbone / 1e9 <= high, backbone
    assert active_low <= active / 1e9 <= active_high, active
    if name.startswith("no-gengram/"):
        assert model.gengram.layers == [] and counts["gengram_params"] == 0
    else:
        assert model.gengram.layers == [3, 6, 10] and model.gengram.window == 21
        assert counts["gengram_params"] == 3 * gengram_params(model.gengram, model.hidden_size)


@pytest.mark.parametrize("name", GRID + ["gengram-10b.yaml"])
def test_baseline_is_the_same_model_without_gengram(name):
    with_gengram = load_config(MODELS / name)
    baseline = load_config(MODELS / "no-gengram" / name)
    with_gengram.model.gengram.layers = []
    assert baseline == with_gengram


@pytest.mark.parametrize("name", GRID)
def test_attention_variants(name):
    model = load_config(MODELS / name).model
    attention = Path(name).stem.rsplit("-", 1)[1]
    moe = name.startswith("moe")
    assert model.moe.num_experts == (8 if moe else 0)
    assert model.hidden_size == (1024 if moe else 1280) and model.num_layers == 12 and model.num_attention_heads == 16
    if attention == "mla":
        mla = model.mla
        expected = (256, 64, 64, 128) if moe else (512, 128, 128, 256)
        assert model.attention == "mla" and mla.q_lora_rank is None
        assert (mla.kv_lora_rank, mla.qk_head_dim, mla.qk_pos_emb_head_dim, mla.v_head_dim) == expected
    else:
        assert model.attention == "standard"
        assert model.num_query_groups == (8 if attention == "gqa" else None)
