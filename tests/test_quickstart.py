"""`nucleotron quickstart` end to end, shortened: genome -> pack -> both arms -> the summary over seeds and the plot."""
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

import pytest

import warm_python
from nucleotron.train.quickstart import TrainingRun, child_environment, plan_jobs, train_all
from train_runs import training_env


def test_quickstart_preps_trains_both_arms_and_reports_over_seeds(tmp_path):
    out = tmp_path / "qs"
    command = [sys.executable, "-m", "nucleotron.launch.cli", "quickstart", "--out", str(out), "--steps", "5",
               "--genome-mb", "0.4", "--seq-len", "128", "--seeds", "2", "--jobs", "2"]
    result = warm_python.run(command, capture_output=True, text=True, timeout=900, env=training_env())
    assert result.returncode == 0, result.stderr[-4000:]
    manifest = json.loads((out / "packs" / "seq128" / "manifest.json").read_text())
    assert manifest["seq_len"] == 128 and set(manifest["blend"]) == {"train", "valid"}
    finals = {}
    for arm in ("baseline", "gengram"):
        finals[arm] = []
        for seed in (1, 2):
            run = out / "runs" / "quickstart" / f"{arm}-seed{seed}"
            records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            valid = [r for r in records if r["kind"] == "valid"]
            assert [r["step"] for r in valid] == [2, 4, 5]  # three validations, the last at the end
            finals[arm].append(valid[-1])
            assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000005"
            assert any(p.name.startswith("offline-run-") for p in (run / "wandb").iterdir())
            assert f"run.seed={seed}" in result.stdout  # the printed training commands
    assert "model.gengram.layers=[]" in result.stdout
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    names = [f"{arm}-seed{seed}" for seed in (1, 2) for arm in ("baseline", "gengram")]
    commands = [line for line in result.stdout.splitlines() if line.startswith("$ OMP_NUM_THREADS=")]
    assert [c.split("run.name=quickstart-")[1].split()[0] for c in commands] == names
    assert all(c.startswith(f"$ OMP_NUM_THREADS={threads} nucleotron train ") for c in commands)
    notes = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert [n.split()[1] for n in notes] == names  # one note per run, in run order whatever finished first
    validation_sets = set()
    for name in names:
        log = out / "runs" / "quickstart" / name / "train.log"
        assert f">> {log} 2>&1" in result.stdout and "step" in log.read_text()
        validation_sets |= set(re.findall(r"validation: 128 samples per group \(human, nonhuman\), tokens sha256 "
                                          r"([0-9a-f]{12})", log.read_text()))
    assert len(validation_sets) == 1  # both arms and both seeds scored on the same held-out samples
    table = result.stdout[result.stdout.index("validation after 5 steps"):]
    for arm, runs in finals.items():
        losses = [r["loss"] for r in runs]
        spread = (f"{statistics.fmean(losses):.4f} ± {statistics.stdev(losses):.4f} "
                  f"[{min(losses):.4f}, {max(losses):.4f}]")
        assert f"{arm:<10} {2:>5}  {spread}" in table
    deltas = [g["loss"] - b["loss"] for b, g in zip(finals["baseline"], finals["gengram"])]
    assert f"per seed: {deltas[0]:+.4f}, {deltas[1]:+.4f}" in table
    _check_order_zero_reference(out / "packs" / "seq128", table, tmp_path / "cache")
    plot = out / "quickstart-curves.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"learning curves: {plot}" in table
    assert "W&B offline logs" in table and "nucleotron analyze gengram" in table


def _check_order_zero_reference(pack, table, cache):
    """The printed order-0 reference, by hand: the training split's base composition (add-one smoothed, then
    add-1 toward itself) scored on the validation samples the trainer scores, EOD targets excluded."""
    import numpy as np

    from nucleotron.data_prep.manifest import load_manifest
    from nucleotron.train.data import build_valid_datasets

    printed = re.search(r"count-based references on the same samples.*: order 0 \(base composition\) ([0-9.]+), "
                        r"order 3 ([0-9.]+), order 6 ([0-9.]+), order 12 ([0-9.]+)", table)
    assert printed, table
    manifest = load_manifest(str(pack))
    symbols = [manifest.vocab[s] for s in "ACGTN"]
    training = np.concatenate([np.fromfile(pack / f"{group}_train.bin", dtype=np.uint8)
                               for group in ("human", "nonhuman")])
    counts = np.array([(training == s).sum() for s in symbols], dtype=float)
    p = (counts + (counts + 1) / (counts.sum() + 5)) / (counts.sum() + 1)
    bits = []
    for dataset in build_valid_datasets(manifest, 128, str(cache)).values():
        for index in range(128):
            labels = dataset[index]["labels"].numpy()
            bits += [-np.log2(p[symbols.index(int(t))]) for t in labels if t != manifest.eod]
    assert float(printed.group(1)) == pytest.approx(np.mean(bits), abs=5e-5)


def _revcomp(seq: str) -> str:
    return seq.translate(str.maketrans("ACGTacgt", "TGCAtgca"))[::-1]


def test_synthetic_genome_matches_its_annotation_and_design():
    """The quickstart's genome: each annotated element reads as its consensus on its strand, repeats are
    soft-masked, and the composition is the design's (human-like GC, depleted CpG, ~35-40% interspersed repeats)."""
    from nucleotron.data_prep.genome_sim import GenomeDesign, simulate_species

    first, second, annotation = simulate_species(3, {"chrA": 150_000, "chrB": 150_000})
    seen = set()
    for chrom, seq in first.items():
        text = seq.decode()
        for f in annotation[chrom]:
            piece = text[f.start:f.end]
            piece = piece if f.strand == "+" else _revcomp(piece)
            seen.add(f.kind)
            if f.kind == "TATA_box":
                assert piece[:4] == "TATA" and piece[4] in "AT" and piece[5] == "A" and piece[6] in "AT"
            elif f.kind == "polyA_signal":
                assert piece == "AATAAA"
            elif f.kind == "splice_donor":
                assert piece[3:5] == "GT", piece
            elif f.kind == "splice_acceptor":
                assert piece.endswith("AG"), piece
            elif f.kind in ("repeat", "microsatellite", "low_complexity", "satellite"):
                assert piece.replace("N", "n").islower()
            elif f.kind == "gap":
                assert set(piece) == {"N"}
    assert {"gene", "exon", "splice_donor", "splice_acceptor", "repeat", "microsatellite", "gap", "satellite",
            "segmental_duplication"} <= seen
    design = GenomeDesign()
    for chrom, seq in first.items():  # one centromeric block per chromosome at the design's share
        satellite = sum(f.end - f.start for f in annotation[chrom] if f.kind == "satellite")
        assert abs(satellite / len(seq) - design.alpha_satellite_share - design.hsat_share) < 0.005
    genome = b"".join(first.values())
    upper = genome.upper()
    acgt = sum(upper.count(b) for b in b"ACGT")
    gc = (upper.count(b"G") + upper.count(b"C")) / acgt
    cpg_oe = upper.count(b"CG") / acgt / (gc / 2) ** 2
    masked = sum(genome.count(b) for b in b"acgt") / len(genome)
    assert 0.37 < gc < 0.45 and cpg_oe < 0.6 and 0.25 < masked < 0.5, (gc, cpg_oe, masked)
    assert {k: len(v) for k, v in second.items()}.keys() == first.keys()
    for chrom in first:  # the second species: ~1.2% substitutions plus small indels, so lengths drift slightly
        assert abs(len(second[chrom]) - len(first[chrom])) < 10 * design.indels * len(first[chrom]) + 20


def test_mutate_rate_and_transition_share():
    import numpy as np

    from nucleotron.data_prep.genome_sim import mutate

    rng = np.random.default_rng(0)
    seq = bytes(np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, 200_000)])
    changed = mutate(rng, seq, 0.012, indels=0.0)
    diff = [(a, b) for a, b in zip(seq, changed) if a != b]
    transitions = sum(1 for a, b in diff if {a, b} in ({ord("A"), ord("G")}, {ord("C"), ord("T")}))
    assert 0.010 < len(diff) / len(seq) < 0.014
    assert 0.63 < transitions / len(diff) < 0.70  # transitions : transversions = 2 : 1, as in human variation
    assert mutate(rng, seq.lower(), 0.05, indels=0.0).islower()


def test_jobs_default_to_one_per_core_and_share_the_cores():
    assert plan_jobs(None, runs=4, cores=2) == (2, 1)
    assert plan_jobs(None, runs=1, cores=2) == (1, 2)  # never more trainings than runs
    assert plan_jobs(1, runs=4, cores=2) == (1, 2)
    assert plan_jobs(3, runs=2, cores=8) == (2, 4)
    assert plan_jobs(4, runs=4, cores=2) == (4, 1)  # oversubscribed: still one thread each


def test_children_get_the_thread_count_whatever_the_shell_exported(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert child_environment(1)["OMP_NUM_THREADS"] == "1"


def _fake_run(tmp_path, name, code):
    """A stand-in for `nucleotron train`: a Python one-liner (the printed command drops its first 3 words)."""
    return TrainingRun(name, tmp_path / name, [sys.executable, "-c", code])


def test_notes_follow_run_order_and_logs_hold_each_runs_output(tmp_path, capsys):
    slow = _fake_run(tmp_path, "slow", "import time; time.sleep(1.0); print('slow done')")
    fast = _fake_run(tmp_path, "fast", "print('fast done')")
    train_all([slow, fast], jobs=2, threads=1, poll_s=0.05)
    out = capsys.readouterr().out
    assert f"$ OMP_NUM_THREADS=1 nucleotron >> {slow.log} 2>&1\n$ OMP_NUM_THREADS=1 nucleotron >> {fast.log} 2>&1" in out
    notes = [line for line in out.splitlines() if line.startswith("[")]
    assert [n.split()[1] for n in notes] == ["slow", "fast"]
    assert slow.log.read_text() == "slow done\n" and fast.log.read_text() == "fast done\n"
    train_all([fast], jobs=1, threads=1, poll_s=0.05)  # a re-run (which resumes a training) keeps the first log
    assert fast.log.read_text() == "fast done\nfast done\n"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_failed_run_names_its_log_and_stops_the_others(tmp_path):
    pid_file = tmp_path / "pid"
    sleeper = _fake_run(tmp_path, "sleeper", f"import os, time; open({str(pid_file)!r}, 'w')"
                                             f".write(str(os.getpid())); time.sleep(60)")
    failing = _fake_run(tmp_path, "failing", f"import os, sys, time\nwhile not os.path.getsize({str(pid_file)!r}) "
                                             f"if os.path.exists({str(pid_file)!r}) else True: time.sleep(0.05)\n"
                                             f"print('boom'); sys.exit(3)")
    with pytest.raises(SystemExit) as stopped:
        train_all([sleeper, failing], jobs=2, threads=1, poll_s=0.05)
    assert str(stopped.value) == (f"nucleotron quickstart: training failing failed with exit status 3; "
                                  f"its output: {failing.log}")
    assert failing.log.read_text() == "boom\n"
    assert not _alive(int(pid_file.read_text()))


def test_sigterm_stops_the_trainings(tmp_path):
    pid_file = tmp_path / "pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    script = ("import sys; from pathlib import Path; from nucleotron.train.quickstart import TrainingRun, train_all; "
              f"train_all([TrainingRun('sleeper', Path({str(tmp_path / 'run')!r}), [sys.executable, '-c', {child!r}])],"
              " jobs=1, threads=1)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    deadline = time.monotonic() + 60
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    parent.send_signal(signal.SIGTERM)
    _, err = parent.communicate(timeout=60)
    assert parent.returncode == 1
    assert "interrupted; the trainings were stopped (re-run to resume them)" in err
    assert not _alive(int(pid_file.read_text()))
