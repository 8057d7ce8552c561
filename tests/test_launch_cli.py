"""`nucleotron launch slurm|local|sweep` as a user meets them: fast dry runs, errors that name the setting, and the
paper's ablation sweep expanding into the right runs."""
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from nucleotron.configs import load_config
from nucleotron.launch import commands, slurm, sweep
from nucleotron.launch.slurm_options import SlurmOptions, time_limit_seconds, to_cli_args
from nucleotron.launch.sweep_spec import expand

CONFIG = "configs/experiments/tiny-cpu.yaml"
ALL = Path("configs/sweeps/ablations-50b/all.yaml")


def test_dry_run_is_fast_and_never_imports_torch():
    code = ("import sys, io, contextlib; from nucleotron.launch.cli import main; buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf): rc = main(['launch', 'slurm', '--config', "
            f"'{CONFIG}', '--gpus-per-node', '0', '--dry-run'])\n"
            "with contextlib.redirect_stdout(buf): rc += main(['launch', 'sweep', str('{ALL}'), '--dry-run'])\n"
            "assert rc == 0, buf.getvalue()\n"
            "heavy = [m for m in ('torch', 'megatron', 'triton') if m in sys.modules]\n"
            "assert not heavy, heavy")
    out = subprocess.run([sys.executable, "-c", code.replace("{ALL}", str(ALL))], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr


def test_dry_run_prints_a_script(capsys):
    assert slurm.main(["--config", CONFIG, "--gpus-per-node", "0", "--dry-run", "train.max_steps=3"]) == 0
    script = capsys.readouterr().out
    assert script.startswith("#!/bin/bash") and "#SBATCH --requeue" in script


@pytest.mark.parametrize("argv, message", [
    (["--nodes", "1", "--gpus-per-node", "3", "parallel.tensor=2"], "parallel.tensor x pipeline x context"),
    (["--gpus-per-node", "0", "--ntasks-per-node", "3"], "train.global_batch_size=4 is not divisible"),
    (["--gpus-per-node", "8", "--ntasks-per-node", "2"], "--ntasks-per-node=2 must equal --gpus-per-node=8"),
    (["--time", "4", "--signal-lead", "300"], "--signal-lead=300 s is not shorter than --time=4"),
    (["--gpus-per-node", "0", "--job-name", "a\nb"], "control character"),
    (["--env", "1X=2"], "--env '1X=2' must look like NAME=VALUE"),
    (["--sbatch-arg=constraint=h200"], "--sbatch-arg"),
    (["optim.lrr=1"], "did you mean 'optim.lr'"),
    (["--time", "banana"], "--time='banana' is not a Slurm time limit; use one of MM, MM:SS, HH:MM:SS, D-HH, "
                           "D-HH:MM, D-HH:MM:SS"),
    (["--time", "1:2:3:4"], "--time='1:2:3:4' is not a Slurm time limit"),
    (["--time", "-5"], "--time='-5' is not a Slurm time limit"),
])
def test_errors_name_the_setting(capsys, argv, message):
    assert slurm.main(["--config", CONFIG, "--dry-run", *argv]) == 2
    assert message in capsys.readouterr().err


def test_submitting_without_packs_says_how_to_make_them(capsys, tmp_path):
    assert slurm.main(["--config", CONFIG, "--gpus-per-node", "0", f"run.dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "data.packs is not set" in err and "nucleotron data prep" in err


def test_unknown_launch_subcommand(capsys):
    assert commands.main(["qsub"]) == 2
    assert "unknown subcommand 'qsub'" in capsys.readouterr().err


def test_local_dry_run_is_torchrun_on_this_interpreter(capsys):
    from nucleotron.launch import local
    assert local.main(["--nproc", "2", "--config", CONFIG, "--dry-run", "data.packs=/p"]) == 0
    words = shlex.split(capsys.readouterr().out)
    assert words[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=2" in words and words[words.index("--config") + 1].endswith("tiny-cpu.yaml")
    assert local.main(["--nproc", "3", "--config", CONFIG, "--dry-run"]) == 2  # batch 4 over 3 ranks


@pytest.mark.parametrize("text, seconds", [("30", 1800), ("1:30", 90), ("2:00:00", 7200), ("1-12", 129600),
                                           ("1-0:10", 87000), ("3-1:2:3", 262923), ("UNLIMITED", None),
                                           ("-5", None), ("x-1", None), ("1-", None), ("", None)])
def test_time_limits(text, seconds):
    assert time_limit_seconds(text) == seconds


def test_cli_args_round_trip():
    options = SlurmOptions(nodes=3, gpus_per_node=4, time="2:00:00", exclusive=True, env=["A=b c"],
                           sbatch_args=["--constraint=h200"], launcher="torchrun")
    args = slurm.parser().parse_intermixed_args(["--config", CONFIG, *to_cli_args(options)])
    from nucleotron.launch.slurm_options import merged
    assert merged(SlurmOptions(), args) == options


def test_paper_sweep_expands_to_the_36_ablation_runs():
    runs = expand(ALL)
    names = [run.name for run in runs]
    assert len(names) == len(set(names)) == 12 + 13 + 5 + 6
    assert {run.config.name for run in runs} >= {f"{b}-{a}.yaml" for b in ("dense-0.3b", "moe-1.2b")
                                                 for a in ("mha", "gqa", "mla")}
    by_name = {run.name: run for run in runs}
    cfg = load_config(by_name["layer-sweep-L10"].config, by_name["layer-sweep-L10"].overrides)
    assert (cfg.model.gengram.layers, cfg.model.gengram.window, cfg.model.moe.num_experts) == ([10], None, 8)
    cfg = load_config(by_name["window-sweep-W12"].config, by_name["window-sweep-W12"].overrides)
    assert (cfg.model.gengram.layers, cfg.model.gengram.window) == ([10], 12)
    cfg = load_config(by_name["cross-arch-dense-0.3b-mla-baseline"].config,
                      by_name["cross-arch-dense-0.3b-mla-baseline"].overrides)
    assert (cfg.model.attention, cfg.model.gengram.layers, cfg.model.moe.num_experts) == ("mla", [], 0)
    assert "cross-arch" in cfg.logging.wandb_tags and cfg.run.name == "cross-arch-dense-0.3b-mla-baseline"
    cfg = load_config(by_name["moe-balance-128e-gengram-3-6-10"].config,
                      by_name["moe-balance-128e-gengram-3-6-10"].overrides)
    assert (cfg.model.moe.num_experts, cfg.model.hidden_size, cfg.model.gengram.window) == (128, 1280, None)
    for run in runs:  # the paper's budget: 50B tokens in global batches of 1,024 x 8,192
        cfg = load_config(run.config, run.overrides)
        assert (cfg.train.max_tokens, cfg.train.global_batch_size, cfg.data.seq_len) == (50_000_000_000, 1024, 8192)
        assert cfg.run.dir == f"runs/ablations-50b/{run.name}"


def test_sweep_dry_run_lists_runs_with_their_own_commands(capsys):
    assert sweep.main([str(ALL), "--dry-run", "--only", "window-sweep-*", "data.packs=/data/8k",
                       "--partition", "h200"]) == 0
    lines = capsys.readouterr().out.splitlines()
    commands_ = [line.strip() for line in lines if line.startswith("  nucleotron launch slurm")]
    assert len(commands_) == 5
    words = shlex.split(commands_[0])
    assert "data.packs=/data/8k" in words and "--partition" in words and "model.gengram.window=6" in words
    assert "run.dir=runs/ablations-50b/window-sweep-W6" in words


@pytest.mark.parametrize("text, message", [
    ("name: s\nconfig: x.yaml\nmatrix: [{a: [{name: v, overides: []}]}]\n", "overides"),
    ("name: s\nmatrix: [{a: [{name: v}]}]\n", "has no config"),
    ("name: s\nconfig: {cfg}\nmatrix: [{a: [{name: v}, {name: v}]}]\n", "run names repeat: s-v"),
    ("name: s\nconfig: {cfg}\nmatrix: [{a: [{name: 'bad name'}]}]\n", "value name 'bad name'"),
    ("name: s\nconfig: {cfg}\nlaunch: {nodez: 2}\n", "nodez"),
    ("name: s\ninclude: [self.yaml]\n", "cycle"),
])
def test_bad_sweep_files_say_what_is_wrong(tmp_path, capsys, text, message):
    path = tmp_path / "self.yaml"
    path.write_text(text.replace("{cfg}", str(Path(CONFIG).resolve())))
    assert sweep.main([str(path), "--dry-run"]) == 2
    assert message in capsys.readouterr().err
