"""The `nucleotron` console script and `nucleotron model info`."""
import json
import subprocess
import sys

import pytest

from nucleotron.configs import load_config
from nucleotron.launch.cli import COMMANDS, main


def run_cli(*args):
    return subprocess.run(["nucleotron", *args], capture_output=True, text=True)


def test_help_lists_every_command():
    out = run_cli("--help")
    assert out.returncode == 0
    for name in COMMANDS:
        assert f"  {name}" in out.stdout


def test_unknown_command_exits_2(capsys):
    assert main(["bogus"]) == 2
    assert "unknown command 'bogus'" in capsys.readouterr().err


def test_model_info_prints_architecture_json():
    out = run_cli("model", "info", "--config", "configs/models/tiny.yaml")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    cfg = load_config("configs/models/tiny.yaml").model
    assert (info["layers"], info["hidden"], info["heads"], info["kv_groups"]) == (
        cfg.num_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_query_groups)
    assert info["gengram_layers"] == [2]
    assert info["total_params"] == info["active_params"] > 0  # dense: every parameter is active


def test_model_info_reports_config_errors_with_exit_2():
    out = run_cli("model", "info", "--config", "configs/models/tiny.yaml", "parallel.tensor=3")
    assert out.returncode == 2
    assert "model.num_attention_heads=4 is not divisible by parallel.tensor=3" in out.stderr


def test_model_info_counts_10b_without_importing_torch():
    code = ("import sys, json, io, contextlib; from nucleotron.launch.cli import main; buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf): rc = main(['model', 'info', '--config', "
            "'configs/models/gengram-10b.yaml'])\n"
            "assert 'torch' not in sys.modules, 'counting must not build the model'\n"
            "print(buf.getvalue())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    backbone_total = info["total_params"] - info["gengram_params"]
    backbone_active = info["active_params"] - info["gengram_params"]
    assert 9.5e9 < backbone_total < 10.5e9  # paper: ~10B total
    assert 2.85e9 < backbone_active < 3.05e9  # paper: 2.87B active (top-2 of 8 experts)
    assert info["gengram_params"] == pytest.approx(3 * 70.35e6, rel=1e-3)  # spec: 70.4M per layer at H=4096


def test_moe_1p2b_counts():
    from nucleotron.model.params import count_parameters
    counts = count_parameters(load_config("configs/models/moe-1.2b.yaml").model)
    gengram = counts["gengram_params"]
    assert 1.15e9 < counts["total_params"] - gengram < 1.3e9
    assert 0.28e9 < counts["active_params"] - gengram < 0.36e9
    assert gengram == pytest.approx(3 * 32.6e6, rel=2e-3)  # spec: 32.6M per layer at H=1024
