"""`nucleotron quickstart` end to end, shortened: genome -> pack -> two runs -> the side-by-side table."""
import json
import subprocess
import sys

from train_runs import training_env


def test_quickstart_preps_trains_both_models_and_reports(tmp_path):
    out = tmp_path / "qs"
    command = [sys.executable, "-m", "nucleotron.launch.cli", "quickstart", "--out", str(out), "--steps", "12",
               "--genome-mb", "0.4", "--seq-len", "128"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=training_env())
    assert result.returncode == 0, result.stderr[-4000:]
    manifest = json.loads((out / "packs" / "seq128" / "manifest.json").read_text())
    assert manifest["seq_len"] == 128 and set(manifest["blend"]) == {"train", "valid"}
    finals = {}
    for name in ("baseline", "gengram"):
        run = out / "runs" / name
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        finals[name] = [r for r in records if r["kind"] == "valid"][-1]
        assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000012"
        assert any(p.name.startswith("offline-run-") for p in (run / "wandb").iterdir())
    assert "model.gengram.layers=[]" in result.stdout  # the printed baseline command
    table = result.stdout[result.stdout.index("validation after 12 steps"):]
    for name, final in finals.items():
        assert f"{name:<10} {final['loss']:>8.4f}" in table
    assert "Gengram - baseline" in table and "W&B offline logs" in table
