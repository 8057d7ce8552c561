"""The benchmark scripts still run end to end (tiny sizes; their numbers are not checked, only that they are
produced), so a refactor of the code they drive cannot leave them broken until someone needs a measurement."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_data_prep_benchmark_compares_at_one_and_n_cores(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "data_prep.py"), "--size", "3",
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
