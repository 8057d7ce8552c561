"""The trainer's megatron optimizer groups on a tiny Gengram model: decay on matrices only, and the Gengram tables'
own learning-rate multiplier and weight-decay switch, read through the scheduler as training would see them."""
import pytest

from distributed import run_distributed
from megatron_workers import optimizer_groups

TINY = "configs/models/tiny.yaml"  # dense, one Gengram layer (layer 2)
WARMUP_DONE = 10  # 5% of 100 steps is warmup; at step 10 the cosine has barely started


@pytest.fixture(scope="module", params=[("1.0", "true"), ("0.1", "false")], ids=["default", "mult0.1-nodecay"])
def built(request):
    lr_mult, decay = request.param
    overrides = [f"model.gengram.table_lr_mult={lr_mult}", f"model.gengram.table_weight_decay={decay}"]
    (result,) = run_distributed(1, optimizer_groups, TINY, overrides, WARMUP_DONE)
    return float(lr_mult), decay == "true", result


def test_every_trainable_parameter_is_optimised(built):
    _, _, result = built
    assert sorted(result["groups"]) == sorted(result["shapes"])


def test_matrices_decay_vectors_do_not(built):
    _, _, result = built
    groups, shapes, wd = result["groups"], result["shapes"], result["weight_decay"]
    for name, group in groups.items():
        if "gengram.tables" in name:
            continue
        assert group["weight_decay"] == (wd if len(shapes[name]) >= 2 else 0.0), name
        assert group["max_lr"] == result["lr"], name


def test_tables_follow_the_gengram_options(built):
    lr_mult, decay, result = built
    tables = {n: g for n, g in result["groups"].items() if "gengram.tables" in n}
    assert sorted(tables) == sorted(f"decoder.layers.1.gengram.tables.{i}" for i in range(6))  # local layer 1 = L2
    reference = result["groups"]["decoder.layers.0.mlp.linear_fc1.weight"]
    for group in tables.values():
        assert group["max_lr"] == pytest.approx(result["lr"] * lr_mult)
        assert group["lr"] == pytest.approx(reference["lr"] * lr_mult)  # the same schedule, scaled
        assert group["weight_decay"] == (result["weight_decay"] if decay else 0.0)
