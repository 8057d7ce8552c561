"""benchmarks/hnet_vs_transformer.py still runs end to end (tiny contexts; its numbers are not checked), and its
Transformer peer has the H-Net's parameter count to within one block."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _benchmark():
    spec = importlib.util.spec_from_file_location("hnet_vs_transformer",
                                                  os.path.join(ROOT, "benchmarks", "hnet_vs_transformer.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_smoke_writes_one_row_per_context(tmp_path):
    bench = _benchmark()
    out = tmp_path / "table.md"
    assert bench.main(["--smoke", "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split("|")[1].strip() for row in rows] == ["32", "64"]
    hnet, transformer, layers = bench.build_models(os.path.join(ROOT, "configs/models/dnahnet-tiny.yaml"), 8)
    n_h, n_t = (sum(p.numel() for p in m.parameters()) for m in (hnet, transformer))
    per_block = sum(p.numel() for p in transformer.backbone.main_network.layers[0].parameters())
    assert abs(n_h - n_t) <= per_block / 2 + 1 and layers >= 1
