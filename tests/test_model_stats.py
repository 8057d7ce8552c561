"""model_stats: Gengram gate means and MoE routing balance of the last forward, checked against a recount."""
import pytest

from distributed import run_distributed
from megatron_workers import routing_stats

TINY = "configs/models/tiny.yaml"  # 4 layers, Gengram at layer 2
MOE = ["model.moe.num_experts=4", "model.moe.top_k=2", "model.moe.ffn_hidden_size=32"]


@pytest.fixture(scope="module")
def moe():
    (result,) = run_distributed(1, routing_stats, TINY, MOE)
    return result


def test_moe_stats_are_the_last_forwards_and_match_a_recount(moe):
    for stats, expected, gates in zip(moe["train"], moe["expected"], moe["gate_means"]):
        assert set(expected) == {1, 2, 3, 4}
        assert stats["gengram/gate_mean/layer2"] == pytest.approx(gates[2])
        for layer, want in expected.items():
            assert stats[f"moe/aux_loss/layer{layer}"] == pytest.approx(want["aux_loss"], rel=1e-5)
            assert stats[f"moe/z_loss/layer{layer}"] == pytest.approx(want["z_loss"], rel=1e-5)
            load = [stats[f"moe/load/layer{layer}/expert{e}"] for e in range(4)]
            assert load == pytest.approx(want["load"])
            assert stats[f"moe/load_max/layer{layer}"] == pytest.approx(4 * max(want["load"]))
        assert len(stats) == 1 + 4 * (3 + 4)
    assert moe["train"][0] != moe["train"][1], "two batches, two sets of values"


def test_megatron_tracker_still_sums_every_forward(moe):
    for layer in (1, 2, 3, 4):
        both = sum(e[layer]["aux_loss"] for e in moe["expected"])
        assert moe["tracker"]["load_balancing_loss"][layer - 1] == pytest.approx(both, rel=1e-5)


def test_no_grad_forward_has_loads_but_no_losses_and_reset_clears(moe):
    keys = moe["no_grad"].keys()
    assert "moe/load_max/layer1" in keys and "gengram/gate_mean/layer2" in keys
    assert not [k for k in keys if "aux_loss" in k or "z_loss" in k]
    assert moe["after_reset"] == {}


def test_dense_gengram_model_has_only_gate_means():
    (dense,) = run_distributed(1, routing_stats, TINY, ["model.gengram.layers=[1,3]"])
    stats = dense["train"][-1]
    assert stats.keys() == {"gengram/gate_mean/layer1", "gengram/gate_mean/layer3"}
    for layer, gate in dense["gate_means"][-1].items():
        assert stats[f"gengram/gate_mean/layer{layer}"] == pytest.approx(gate) and 0.0 < gate < 1.0


def test_sequence_parallel_rank_values_average_to_the_single_process_values(moe):
    """Under TP=2 with sequence parallelism each rank routes half the tokens; the rank averages of the loss values
    and of the expert loads equal what one process computes over all tokens."""
    ranks = run_distributed(2, routing_stats, TINY, MOE + ["parallel.tensor=2", "parallel.sequence_parallel=true"])
    single = moe["train"][-1]
    for key, value in single.items():
        if key.startswith("moe/load_max"):
            continue  # the max of a mean is not the mean of the maxima
        mean = sum(rank["train"][-1][key] for rank in ranks) / 2
        assert mean == pytest.approx(value, rel=1e-4, abs=1e-6), key
