"""The benchmark scripts still run end to end (tiny sizes; their numbers are not checked, only that they are
produced), so a refactor of the code they drive cannot leave them broken until someone needs a measurement."""
import importlib.util
import os
import re
import sys

import pytest

import warm_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_data_prep_benchmark_compares_at_one_and_n_cores(tmp_path):
    proc = warm_python.run([sys.executable, os.path.join(ROOT, "benchmarks", "data_prep.py"), "--size", "3",
                           "--contig", "1", "--seq-len", "1000", "--workers", "2", "--repeats", "2",
                           "--dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split(":")[0].strip(): line for line in proc.stdout.splitlines()}
    for label in ("1 core", "2 cores"):
        ratio = re.search(r"ratio (\d+\.\d+) \((\d+\.\d+)-(\d+\.\d+)\)", lines[label])
        assert ratio, lines[label]
        median, low, high = map(float, ratio.groups())
        assert 0 < low <= median <= high
    assert re.search(r"tokens written: [\d,]+; peak RSS", proc.stdout)
    assert not os.path.exists(tmp_path / "pack-2-0")      # prep outputs are removed between repeats


def _train_throughput():
    """benchmarks/train_throughput.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("train_throughput",
                                                  os.path.join(ROOT, "benchmarks", "train_throughput.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["MoE-1.2B", "Dense-0.3B"])
def test_transformers_peer_is_the_same_architecture(name):
    """The peer of each benchmarked model (built on the meta device, nothing allocated) has Nucleotron's sizes and
    exactly its analytic parameter count."""
    from nucleotron.configs import load_config
    from nucleotron.model.params import count_parameters

    bench = _train_throughput()
    config, extra, _ = bench.MODELS[name]
    cfg = load_config(os.path.join(ROOT, config), extra + ["model.gengram.layers=[]"]).model
    peer = bench.peer_model(cfg, device="meta")
    assert type(peer).__name__ == ("MixtralForCausalLM" if cfg.moe.num_experts else "LlamaForCausalLM")
    assert sum(p.numel() for p in peer.parameters()) == count_parameters(cfg)["total_params"]
    c = peer.config
    rope = getattr(c, "rope_parameters", None) or {"rope_theta": c.rope_theta}
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.vocab_size,
            rope["rope_theta"]) == (cfg.num_layers, cfg.hidden_size, cfg.num_attention_heads,
                                    cfg.num_query_groups or cfg.num_attention_heads, cfg.vocab_size, cfg.rope_base)
    if cfg.moe.num_experts:
        assert (c.num_local_experts, c.num_experts_per_tok, c.intermediate_size) == (
            cfg.moe.num_experts, cfg.moe.top_k, cfg.moe.ffn_hidden_size)


def test_train_throughput_smoke_compares_with_transformers_and_gengram(tmp_path):
    from nucleotron.configs import load_config
    from nucleotron.model.params import count_parameters

    proc = warm_python.run([sys.executable, os.path.join(ROOT, "benchmarks", "train_throughput.py"), "--smoke",
                           "--no-save", "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for run in ("Nucleotron", "Nucleotron + Gengram", "transformers peer"):
        assert re.search(rf"^tiny-MoE +{re.escape(run)} +\d+\.\d+ +[\d,]+ +n/a$", proc.stdout, re.M), run
    assert re.search(r"Gengram / baseline step time \d+\.\d+", proc.stdout)
    params = re.search(r"Nucleotron / transformers tokens/s \d+\.\d+ \(parameters: peer ([\d,]+), Nucleotron "
                       r"analytic ([\d,]+)\)", proc.stdout)
    assert params, proc.stdout
    config, extra, _ = _train_throughput().SMOKE_MODELS["tiny-MoE"]
    expected = count_parameters(load_config(os.path.join(ROOT, config), extra + ["model.gengram.layers=[]"]).model)
    assert [int(n.replace(",", "")) for n in params.groups()] == [expected["total_params"]] * 2
    # --no-save stopped each trainer after its last step: no final validation record, no checkpoint
    for run in ("baseline", "gengram"):
        records = (tmp_path / "tiny-MoE" / run / "metrics.jsonl").read_text()
        assert '"kind": "train"' in records and '"kind": "valid"' not in records
