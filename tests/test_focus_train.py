"""`nucleotron focus train`: a FOCUS adapter trained on a frozen checkpoint through the training loop (engine
train/engines/focus.py), and the functional claim of issue 19 on a synthetic long-range task."""
from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
import torch

import warm_python
from train_runs import FAST, REPO, losses, metrics, training_env

FOCUS_YAML = str(REPO / "configs" / "experiments" / "focus-tiny.yaml")
SMALL_BATCH = ["train.micro_batch_size=2", "train.global_batch_size=4"]


pytestmark = pytest.mark.usefixtures("restore_process_state")


def focus_train(pack, base, run_dir, *overrides, expect=0):
    command = [sys.executable, "-m", "nucleotron.launch.cli", "focus", "train", "--checkpoint", str(base), "--config",
               FOCUS_YAML, f"data.packs={pack}", f"run.dir={run_dir}", *FAST, *SMALL_BATCH, *overrides]
    result = warm_python.run(command, capture_output=True, text=True, timeout=600, env=training_env())
    assert result.returncode == expect, (f"exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n"
                                         f"{result.stderr[-5000:]}")
    return result


@pytest.fixture(scope="module")
def focus_run(pack, straight, tmp_path_factory):
    """8 adapter steps on the frozen 8-step tiny run, validation and a checkpoint every 4."""
    run_dir = tmp_path_factory.mktemp("focus") / "run"
    focus_train(pack, straight, run_dir)
    return run_dir


def test_focus_train_runs_the_loop_and_writes_only_the_adapter(focus_run, straight):
    from safetensors import safe_open

    from nucleotron.infer.focus_io import adapter_base
    from nucleotron.train.checkpoint import find_resumable

    records = metrics(focus_run)
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 9))
    assert [r["step"] for r in records if r["kind"] == "valid"] == [4, 8]
    assert all(r["loss"] > 0 and r["focus/kl"] >= 0 for r in records if r["kind"] == "train")
    step8 = focus_run / "checkpoints" / "step-00000008"
    files = sorted(str(p.relative_to(step8)) for p in step8.rglob("*") if p.is_file())
    assert files == ["focus/adapter.safetensors", "focus/optimizer.safetensors", "nucleotron.json",
                     "rng/rank0.safetensors"], "no backbone tensors in an adapter checkpoint"
    with safe_open(str(step8 / "focus" / "adapter.safetensors"), "pt") as handle:
        names = list(handle.keys())
        trained = {name: handle.get_tensor(name) for name in names}
    assert names and all(n.startswith(("summary_embedding", "qkv_adapters.", "proj_adapters.")) for n in names)
    base_dir, _ = find_resumable(str(straight / "checkpoints"), reject=False)
    base = adapter_base(str(step8 / "focus" / "adapter.safetensors"))
    assert base["path"] == base_dir and len(base["sha256"]) == 64 and base["step"] == 8
    with safe_open(str(focus_run / "checkpoints" / "step-00000004" / "focus" / "adapter.safetensors"), "pt") as handle:
        assert any(not torch.equal(handle.get_tensor(n), trained[n]) for n in names), "the adapter trains"
    recorded = (focus_run / "config.yaml").read_text()
    assert f"base_checkpoint: {base_dir}" in recorded   # a requeued `nucleotron train` on it picks the same engine
    saved_model = (straight / "config.yaml").read_text().split("model:")[1].split("\nparallel:")[0]
    assert saved_model.replace("attention_backend: auto", "") in recorded.replace("attention_backend: auto", "")


def test_stopped_and_resumed_focus_run_equals_the_straight_one(pack, straight, focus_run, tmp_path):
    from safetensors import safe_open

    run = tmp_path / "run"
    shutil.copytree(focus_run, run)
    shutil.rmtree(run / "checkpoints" / "step-00000008")
    (run / "checkpoints" / "latest").write_text("step-00000004\n")
    result = focus_train(pack, straight, run)
    assert "resumed from" in result.stderr and "at step 4" in result.stderr
    assert losses(run) == losses(focus_run)
    adapter = os.path.join("checkpoints", "step-00000008", "focus", "adapter.safetensors")
    # the same tensors bit for bit and the same metadata (safetensors writes its metadata map in a per-process hash
    # order, so the files' bytes may differ in the header alone)
    with safe_open(str(run / adapter), "pt") as resumed, safe_open(str(focus_run / adapter), "pt") as reference:
        assert resumed.metadata() == reference.metadata() and sorted(resumed.keys()) == sorted(reference.keys())
        for name in reference.keys():
            assert torch.equal(resumed.get_tensor(name), reference.get_tensor(name)), name


def test_focus_score_reads_the_run_directory(focus_run, straight, tmp_path, capsys):
    from nucleotron.infer.focus_cli import main

    (tmp_path / "seqs.fa").write_text(">s\n" + "ACGTTGCAAC" * 15 + "\n")
    assert main(["score", str(straight), "--adapter", str(focus_run), "--sequences", str(tmp_path / "seqs.fa"),
                 "--out", str(tmp_path / "scores.tsv")]) == 0
    header, row = (tmp_path / "scores.tsv").read_text().splitlines()
    assert row.split("\t")[:2] == ["s", "150"] and float(row.split("\t")[2]) < 0


def test_engine_trains_only_the_adapter_through_ddp(pack, straight):
    from torch.nn.parallel import DistributedDataParallel

    from nucleotron.configs import load_config
    from nucleotron.train.engine import build_engine
    from nucleotron.train.run_dir import resolve_inputs

    cfg = load_config(FOCUS_YAML, [f"data.packs={pack}", f"focus.base_checkpoint={straight}", "optim.lr=1e-2",
                                   "schedule.warmup_fraction=0", *SMALL_BATCH])
    manifest = resolve_inputs(cfg)
    engine = build_engine(cfg)
    assert engine.name == "focus"
    engine.init_distributed()
    try:
        engine.build(manifest, total_steps=4)
        model = engine.model
        assert isinstance(engine.ddp, DistributedDataParallel)
        frozen = {name: p.detach().clone() for name, p in model.base.named_parameters()}
        assert frozen and not any(p.requires_grad for p in model.base.parameters())
        adapter = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
        in_optimizer = {id(p) for group in engine.optimizer.param_groups for p in group["params"]}
        assert in_optimizer == {id(p) for p in model.trainable_parameters()}
        assert {f"focus.base.{name}" for name in frozen} <= set(engine.ddp.parameters_to_ignore)
        generator = torch.Generator().manual_seed(0)
        bases = torch.tensor([8, 5, 6, 7])[torch.randint(0, 4, (2, manifest.seq_len + 1), generator=generator)]
        batch = {"tokens": bases[:, :-1], "labels": bases[:, 1:], "loss_mask": torch.ones(2, manifest.seq_len),
                 "position_ids": torch.arange(manifest.seq_len).expand(2, -1)}
        for _ in range(2):
            sums = engine.forward_backward(iter([batch, batch]), 2)
            assert sums.tokens == 2 * 2 * manifest.seq_len and sums.mean_loss > 0
            assert all(p.grad is None for p in model.base.parameters())
            assert engine.optimizer_step()[0]
        for name, p in model.base.named_parameters():
            assert torch.equal(p, frozen[name]), f"backbone {name} changed"
        changed = [name for name, p in model.named_parameters()
                   if p.requires_grad and not torch.equal(p, adapter[name])]
        assert sorted(changed) == sorted(adapter), "every adapter tensor trains"
        assert engine.statistics()["focus/kl"] > 0
    finally:
        engine.shutdown()


def test_bad_focus_train_inputs_fail_with_a_message_naming_them(pack, straight, tmp_path, capsys):
    from nucleotron.configs import ConfigError, load_config
    from nucleotron.data_prep.manifest import load_manifest
    from nucleotron.infer.focus_cli import main
    from nucleotron.train.engines.focus import FocusEngine

    missing = tmp_path / "no-such-run"
    assert main(["train", "--checkpoint", str(missing), "--config", FOCUS_YAML]) == 2
    err = capsys.readouterr().err
    assert f"focus.base_checkpoint={missing}" in err and "no complete checkpoint found" in err
    hnet = tmp_path / "hnet-ckpt"
    hnet.mkdir()
    (hnet / "nucleotron.json").write_text(json.dumps({"format_version": 2, "step": 3,
                                                      "config_yaml": "model:\n  arch: hnet\n"}))
    assert main(["train", "--checkpoint", str(hnet), "--config", FOCUS_YAML]) == 2
    assert f"{hnet}) holds a model.arch='hnet' model; FOCUS adapts" in capsys.readouterr().err
    assert main(["train", "--checkpoint", str(straight), "--config", FOCUS_YAML, "focus.base_checkpoint=x"]) == 2
    assert "pass the frozen checkpoint as --checkpoint" in capsys.readouterr().err

    with pytest.raises(ConfigError, match=r"the model of a FOCUS run is the frozen checkpoint's .*model.num_layers: "
                                          r"checkpoint 4, config 3"):
        FocusEngine(load_config(FOCUS_YAML, [f"focus.base_checkpoint={straight}", "model.num_layers=3"]))
    with pytest.raises(ConfigError, match="FOCUS training is data-parallel only"):
        FocusEngine(load_config(FOCUS_YAML, [f"focus.base_checkpoint={straight}", "parallel.tensor=2"]))
    engine = FocusEngine(load_config(FOCUS_YAML, [f"focus.base_checkpoint={straight}", "focus.window=128"]))
    with pytest.raises(ConfigError, match="focus.window=128 is not below the pack's sequence length 128"):
        engine._check_lengths(load_manifest(str(pack)))



def test_a_focus_run_refuses_to_resume_with_other_settings_or_another_base(focus_run, straight, tmp_path):
    from nucleotron.configs import ConfigError, load_config
    from nucleotron.train.engines.focus import FocusEngine, checkpoint_digest

    step8 = str(focus_run / "checkpoints" / "step-00000008")
    engine = FocusEngine(load_config(FOCUS_YAML, [f"focus.base_checkpoint={straight}", "focus.k=16"]))
    engine.base_sha256 = checkpoint_digest(engine.base_dir)
    with pytest.raises(ConfigError, match=r"adapter.safetensors was trained with other FOCUS settings \(focus.k: "
                                          r"checkpoint 8, config 16\)"):
        engine._read_adapter(step8)
    engine = FocusEngine(load_config(FOCUS_YAML, [f"focus.base_checkpoint={straight}"]))
    engine.base_sha256 = "0" * 64   # what another checkpoint's content would give
    with pytest.raises(ConfigError, match="was trained on the frozen checkpoint .* has other content"):
        engine._read_adapter(step8)
    changed = tmp_path / "base"
    shutil.copytree(engine.base_dir, changed)
    rng = changed / "rng" / "rank0.safetensors"
    data = bytearray(rng.read_bytes())
    data[len(data) // 2] ^= 0xFF
    rng.write_bytes(bytes(data))   # same size, other bytes
    with pytest.raises(ConfigError, match="fails verification .* does not match the checksum"):
        checkpoint_digest(str(changed))

# ------------------------------------------------------------------ the functional claim (issue 19)

KEY_REPEATS, SEQ, K, W = 7, 80, 8, 16   # the key fills the first k-mer but its EOD
BASE_IDS = torch.tensor([8, 5, 6, 7])   # A C G T
KEY_IDS, QUERY_ID = 20, 40              # ids no pack uses: key symbols 20..23, the query symbol 40


def recall_batch(n: int, generator: torch.Generator):
    """Key recall: EOD, a key symbol (one of 4) repeated KEY_REPEATS times, random bases, and late in the sequence
    (positions SEQ-16..SEQ-2) a query symbol whose next base is the key's base. Only the query position depends on
    the far past, and nothing near it reveals the key. Returns (ids [n, SEQ], query positions [n])."""
    keys = torch.randint(0, 4, (n,), generator=generator)
    ids = torch.cat([torch.full((n, 1), 12), (KEY_IDS + keys)[:, None].expand(n, KEY_REPEATS),
                     BASE_IDS[torch.randint(0, 4, (n, SEQ - 1 - KEY_REPEATS), generator=generator)]], 1)
    where = torch.randint(SEQ - 16, SEQ - 1, (n,), generator=generator)
    rows = torch.arange(n)
    ids[rows, where] = QUERY_ID
    ids[rows, where + 1] = BASE_IDS[keys]
    return ids, where


def test_trained_adapter_halves_kl_and_beats_a_sliding_window_with_the_same_kv_budget():
    """A tiny base model learns key recall (it really uses the far past: cut to a window, it fails); a FOCUS adapter
    trained with the product's train_step must then carry the key in summary K/V across window ends: KL(base||focus)
    at least halves and beats a sliding window that keeps as many K/V entries per layer as FOCUS's cache."""
    import random

    import torch.nn.functional as F

    from nucleotron.configs import load_config
    from nucleotron.infer.checkpoint import single_process_megatron
    from nucleotron.infer.focus_stream import FocusStreamer
    from nucleotron.model.focus import FocusModel
    from nucleotron.model.focus.layout import Layout
    from nucleotron.model.focus.train import adapter_optimizer, train_step
    from nucleotron.model.gpt import build_gpt_model

    vocab = {"PAD": 0, "C": 5, "G": 6, "T": 7, "A": 8, "N": 9, "EOD": 12}
    cfg = load_config("configs/models/tiny.yaml", [
        "model.num_layers=2", "model.gengram.layers=[]", "model.attention_backend=sdpa", f"focus.k={K}",
        f"focus.window={W}", "focus.adapter_params=[q,k,v,o]", "focus.distill_kl=1.0", "focus.attention_kernel=sdpa"])
    generator = torch.Generator().manual_seed(0)
    with single_process_megatron(cfg):
        torch.manual_seed(0)
        base = build_gpt_model(cfg, vocab=vocab)
        # The first layer's attention writes nothing, so the base looks the key up in layer 2. A summary's layer-1 K/V
        # come from the summary embedding alone (no input reaches them yet): a lookup in layer 1 could not be
        # compressed by any adapter, and real models look far back in their middle layers.
        first = base.decoder.layers[0].self_attention
        with torch.no_grad():
            first.linear_proj.weight.zero_()
        for p in first.parameters():
            p.requires_grad_(False)
        optimizer = torch.optim.AdamW([p for p in base.parameters() if p.requires_grad], lr=3e-3)
        positions = torch.arange(SEQ).expand(16, SEQ)
        rows = torch.arange(16)
        for _ in range(100):
            ids, where = recall_batch(16, generator)
            logits = base(ids, positions, None)
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()) + \
                3 * F.cross_entropy(logits[rows, where], ids[rows, where + 1])   # the rare recall, weighted up
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        model = FocusModel(base, cfg.focus)
        held, held_where = recall_batch(32, torch.Generator().manual_seed(99))
        streamer = FocusStreamer(model)
        streamer.score(held[:1])
        budget = streamer.max_entries   # K/V entries per layer FOCUS holds at most on these sequences
        reach = cfg.model.num_layers * (budget - 1)   # how far back a sliding window of `budget` sees, over 2 layers
        assert int(held_where.min()) - KEY_REPEATS > reach, "every query lies beyond the sliding window's reach"
        band = torch.arange(SEQ)[:, None] - torch.arange(SEQ)[None, :]
        window_mask = (band >= 0) & (band < budget)
        plain = Layout(torch.arange(SEQ), torch.zeros(SEQ, dtype=torch.bool))
        at = (torch.arange(32), held_where)

        def measure():
            """(KL focus, KL window, NLL base, NLL focus, NLL window) at the query positions, KL focus after the
            first window."""
            with torch.no_grad():
                p = F.log_softmax(model.base_logits(held).float(), -1)
                logits, layout = model(held)
                q = F.log_softmax(logits[:, ~layout.is_summary].float(), -1)
                r = F.log_softmax(model.run(held, plain, window_mask, 1 << 40, None).float(), -1)  # last `budget` K/V
            answer = held[at[0], at[1] + 1]
            kl_q, kl_r = (p.exp() * (p - q)).sum(-1), (p.exp() * (p - r)).sum(-1)
            nll = [-x[at[0], at[1], answer].mean() for x in (p, q, r)]
            return kl_q[at].mean(), kl_r[at].mean(), *nll, kl_q[:, W:].mean()

        kl_focus0, kl_window, nll_base, _, nll_window, later0 = measure()
        assert nll_base < 0.1 and nll_window > 1.0, f"the base recalls the key ({nll_base:.3f}), cut off it cannot " \
                                                    f"({nll_window:.3f})"
        optimizer, _ = adapter_optimizer(model, lr=1e-2)   # warmup, then down to 0 so the last steps settle
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 10) * (1 - s / 150))
        rng = random.Random(0)
        for _ in range(150):
            train_step(model, optimizer, recall_batch(16, generator)[0], schedule, rng)
        kl_focus, _, _, nll_focus, _, later = measure()
    report = (f"KL(base||focus) at the queries {kl_focus0:.3f} -> {kl_focus:.3f}, after the first window "
              f"{later0:.4f} -> {later:.4f}; window of {budget}: KL {kl_window:.3f}, NLL {nll_window:.3f}; FOCUS NLL "
              f"{nll_focus:.3f}")
    print(report)   # pytest -s shows it
    assert kl_focus <= 0.5 * kl_focus0 and later <= 0.5 * later0, report
    assert kl_focus < kl_window and nll_focus < nll_window, report
    assert nll_focus < 0.5 * torch.log(torch.tensor(4.0)), "the key crossed the window ends (not a uniform guess): " \
                                                           + report
