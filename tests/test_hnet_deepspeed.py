"""DeepSpeedEngine (train/engines/deepspeed.py) driven directly, without the loop: ZeRO-2 and ZeRO-3 over two gloo
processes equal one process with the same global batch; save then load reproduces the next steps exactly; a skipped
step leaves no trace; per-stage statistics. Each worker process runs both stages, one after the other, so ZeRO-3
costs steps, not another process start."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from distributed import run_distributed

GLOBAL_BATCH, SEQ = 4, 36
OVERRIDES = ["train.micro_batch_size=2", f"train.global_batch_size={GLOBAL_BATCH}", "optim.lr=1e-2"]
STAGES = (2, 3)


def global_batch(step: int):
    """The same synthetic DNA global batch for any world size: codon-like repeats, EOD id 5 at one position."""
    g = torch.Generator().manual_seed(1000 + step)
    codons = torch.randint(0, 4, (6, 3), generator=g)
    seqs = codons[torch.randint(0, 6, (GLOBAL_BATCH, SEQ // 3 + 1), generator=g)].reshape(GLOBAL_BATCH, -1)
    seqs[:, 20] = 5
    return [{"tokens": pair[:, :SEQ], "labels": pair[:, 1:SEQ + 1], "loss_mask": torch.ones(2, SEQ),
             "position_ids": torch.arange(SEQ).expand(2, -1)} for pair in seqs.split(2)]


def my_micro_batches(step: int, rank: int, world: int):
    """Rank r's contiguous share of the global batch, in micro-batches of 2 (as the loop's sampler gives them)."""
    micro = global_batch(step)
    share = len(micro) // world
    return micro[rank * share:(rank + 1) * share]


def run_steps(engine, steps, rank, world):
    """Mean loss of each step (all-reduced sums) and whether it updated."""
    losses = []
    for step in steps:
        mine = my_micro_batches(step, rank, world)
        sums = engine.forward_backward(iter(mine), len(mine)).all_reduced(torch.device("cpu"))
        updated, norm = engine.optimizer_step()
        assert updated and math.isfinite(norm)
        losses.append(sums.mean_loss)
    return losses


def worker(checkpoint_dir: str):
    import os

    # A CPU/gloo test by design (the GPU path is NCCL on one device per rank): keep DeepSpeed and torch off any GPU.
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ["DS_ACCELERATOR"] = "cpu"
    os.environ.setdefault("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])  # the engine then splits the cores
    import torch.distributed as dist

    results = {stage: one_stage(stage, os.path.join(checkpoint_dir, f"zero{stage}")) for stage in STAGES}
    dist.barrier()
    dist.destroy_process_group()
    return results


def one_stage(stage: int, checkpoint_dir: str) -> dict:
    from nucleotron.configs.loader import load_config
    from nucleotron.train.engine import build_engine

    cfg = load_config("configs/models/dnahnet-tiny.yaml", OVERRIDES + [f"parallel.zero_stage={stage}"])
    engine = build_engine(cfg)
    engine.init_distributed()   # the second stage finds the process group already up
    rank, world = engine.data_parallel
    torch.manual_seed(cfg.run.seed)
    engine.build(SimpleNamespace(eod=5, seq_len=SEQ, vocab={"A": 0, "C": 1, "G": 2, "T": 3}), total_steps=10)
    params = list(engine.engine.module.parameters())
    # ZeRO-3: the elements this rank holds vs the model's (the tiny model must really be split, not kept whole)
    held = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params)
    total = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in params)
    first = run_steps(engine, [0, 1], rank, world)
    stats = engine.statistics()
    engine.save(checkpoint_dir)
    schedule = engine.schedule_state()
    lr_at_save = engine.learning_rate()
    straight = run_steps(engine, [2, 3], rank, world)

    engine.load(checkpoint_dir)
    engine.load_schedule_state(schedule)
    assert engine.learning_rate() == lr_at_save
    resumed = run_steps(engine, [2, 3], rank, world)

    engine.load(checkpoint_dir)
    engine.load_schedule_state(schedule)
    bad = my_micro_batches(99, rank, world)
    engine.forward_backward(iter(bad), len(bad))
    engine.skip_step()
    assert engine.learning_rate() == lr_at_save
    after_skip = run_steps(engine, [2, 3], rank, world)
    finite = engine.parameters_finite()
    return {"first": first, "stats": stats, "straight": straight, "resumed": resumed, "after_skip": after_skip,
            "finite": finite, "held": held, "total": total}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    one = run_distributed(1, worker, str(tmp_path_factory.mktemp("ds1")), fresh=True)
    two = run_distributed(2, worker, str(tmp_path_factory.mktemp("ds2")), fresh=True)
    return one, two


@pytest.mark.parametrize("stage", STAGES)
def test_two_processes_equal_one_process(runs, stage):
    (one,), two = runs
    one, two = one[stage], [rank[stage] for rank in two]
    assert two[0] == two[1]  # every rank reports the same all-reduced numbers
    assert one["first"][-1] < one["first"][0]
    for key in ("first", "straight"):
        assert one[key] == pytest.approx(two[0][key], rel=1e-5, abs=1e-6)
    for key, value in one["stats"].items():
        assert two[0]["stats"][key] == pytest.approx(value, rel=1e-5), key


def test_zero3_splits_the_parameters_across_ranks(runs):
    (one,), two = runs
    assert one[3]["held"] == one[3]["total"] == one[2]["held"]
    assert two[0][2]["held"] == two[0][2]["total"]                       # ZeRO-2: whole weights on every rank
    assert two[0][3]["held"] + two[1][3]["held"] < 1.1 * two[0][3]["total"]   # ZeRO-3: about half each
    assert max(two[0][3]["held"], two[1][3]["held"]) < 0.6 * two[0][3]["total"]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("world", [1, 2])
def test_save_load_and_skip_reproduce_the_next_steps(runs, world, stage):
    result = (runs[0][0] if world == 1 else runs[1][0])[stage]
    assert result["resumed"] == result["straight"]
    assert result["after_skip"] == result["straight"]
    assert result["finite"]


def test_statistics_per_stage(runs):
    stats = runs[0][0][2]["stats"]
    assert sorted(stats) == sorted(f"hnet/stage{s}/{k}" for s in (1, 2)
                                   for k in ("compression", "boundary_prob", "ratio_loss"))
    assert stats["hnet/stage1/compression"] >= 1 and stats["hnet/stage2/compression"] >= 1
    assert 0 < stats["hnet/stage1/boundary_prob"] < 1 and stats["hnet/stage1/ratio_loss"] > 0


@pytest.mark.parametrize("files, stage, world, refusal", [
    (["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
      "zero_pp_rank_1_mp_rank_00_optim_states.pt"], 2, 2, None),
    (["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
      "zero_pp_rank_1_mp_rank_00_optim_states.pt"], 1, 1, "split over 2 data-parallel processes, this job has 1"),
    (["zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"], 3, 2,
     "this job has 2, and DeepSpeed cannot re-split it: resume with 1 process$"),
    (["zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"], 1, 1,
     "written with parallel.zero_stage=3, this run has parallel.zero_stage=1"),
    (["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"], 3, 1,
     "written with parallel.zero_stage=1 or 2, this run has parallel.zero_stage=3"),
    (["mp_rank_00_model_states.pt"], 2, 1, "written with parallel.zero_stage=0"),
])
def test_a_resume_deepspeed_cannot_do_is_refused_naming_the_setting(tmp_path, files, stage, world, refusal):
    """DeepSpeed 0.19 cannot re-split ZeRO optimizer state for another process count, nor convert ZeRO-3 files
    (it stops with a traceback): the engine says so first, from the names of the files DeepSpeed wrote."""
    from nucleotron.configs import ConfigError
    from nucleotron.train.engines.deepspeed import CHECKPOINT_TAG, check_saved_layout

    (tmp_path / CHECKPOINT_TAG).mkdir()
    for name in files:
        (tmp_path / CHECKPOINT_TAG / name).write_bytes(b"")
    if refusal is None:
        check_saved_layout(str(tmp_path), stage, world)
    else:
        with pytest.raises(ConfigError, match=refusal):
            check_saved_layout(str(tmp_path), stage, world)
