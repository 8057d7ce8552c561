"""The benchmark scripts still run end to end (tiny sizes; their numbers are not checked, only that they are
produced), so a refactor of the code they drive cannot leave them broken until someone needs a measurement."""
import importlib.util
import os
import re
import sys

import numpy as np
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


def _benchmark(name: str):
    """benchmarks/<name>.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train_throughput():
    return _benchmark("train_throughput")


def test_genome_references_against_sequences_of_known_entropy(tmp_path):
    """Order 0 of uniform random bases is 2 bits; an order-12 model of a repeated 97-mer predicts a held-out copy
    of it almost exactly, an order-3 model of it does not (its 3-mers recur); the script's FASTA and pack modes."""
    refs = _benchmark("genome_references")
    rng = np.random.default_rng(0)
    uniform = refs.encode(rng.choice(list(b"ACGT"), 200_000).astype(np.uint8).tobytes())
    assert refs.markov_bits([uniform], [uniform[:50_000]], [(0, 1.0)])[0] == pytest.approx(2.0, abs=0.01)
    unit = rng.choice(list(b"ACGT"), 97).astype(np.uint8).tobytes()
    repeat = refs.encode(unit * 300)
    held_out = refs.encode(unit.lower() * 20)  # soft-masked copies read as upper case
    bits = refs.markov_bits([repeat], [held_out], [(3, 1.0), (12, 1.0)])
    assert bits[12] < 0.02 and bits[3] > 0.1
    assert list(refs.encode(b"ACGTNRacgt")) == [0, 1, 2, 3, -1, -1, 0, 1, 2, 3]
    gapped = refs.encode(b"N" * 50 + unit.lower() * 20)  # an assembly gap: not scored, no context across it
    assert refs.markov_bits([repeat], [gapped], [(12, 1.0)])[12] == pytest.approx(
        refs.markov_bits([repeat], [held_out], [(12, 1.0)])[12])

    fasta = tmp_path / "fa"
    fasta.mkdir()
    for name in ("human.fa", "chimp.fa"):
        (fasta / name).write_text("".join(f">chr{i}\n{(unit * 40).decode()}\n" for i in range(1, 6)))
    proc = warm_python.run([sys.executable, os.path.join(ROOT, "benchmarks", "genome_references.py"), str(fasta),
                            "--orders", "0:1,12:4"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = {int(line.split()[0]): float(line.split()[2]) for line in proc.stdout.splitlines()[2:]}
    assert set(rows) == {0, 12} and rows[12] < 0.05 < rows[0]
    proc = warm_python.run([sys.executable, os.path.join(ROOT, "benchmarks", "genome_references.py"), str(fasta),
                            "--orders", "6"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "--orders '6': expected order:alpha pairs" in proc.stderr


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
