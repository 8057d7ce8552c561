"""The launchers end to end on CPU: `launch local --nproc 2` trains a tiny model with torchrun, and a job submitted
with `launch slurm` to a real single-node Slurm (started here, see slurm_cluster.py) survives an external
`scontrol requeue` and a time-limit style USR1, resumes each time, and ends with the very losses of the
uninterrupted torchrun run.
"""
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from nucleotron.data_prep.prep import PrepOptions, run_prep
from nucleotron.data_prep.synthetic import make_genome, write_fasta
from slurm_cluster import SlurmCluster, SlurmUnavailable

CONFIG = "configs/experiments/tiny-cpu.yaml"
HNET = "configs/models/dnahnet-tiny.yaml"  # dnaHNet through DeepSpeed: the same launcher, script and requeue
HNET_TRAIN = ["train.max_steps=40", "checkpoint.every=4", "train.log_every=1", "train.eval_every=40"]  # mid-run requeue
STEPS = 60  # long enough that each signal in the requeue test lands mid-run on a fast machine
TRAIN = [f"train.max_steps={STEPS}", "checkpoint.every=4", "train.log_every=1", f"train.eval_every={STEPS}"]


@pytest.fixture(scope="module")
def packs(tmp_path_factory):
    root = tmp_path_factory.mktemp("launch-packs")
    write_fasta(str(root / "h.fa"), make_genome(21, {"chr1": 60_000, "chr20": 20_000}).items())
    write_fasta(str(root / "a.fa"), make_genome(22, {"chr1": 40_000, "chr20": 15_000}).items())
    (root / "sources.tsv").write_text("path\tgroup\tassembly\nh.fa\thuman\th\na.fa\tnonhuman\ta\n")
    run_prep(PrepOptions(sources=str(root / "sources.tsv"), seq_len=256, out=str(root / "pack"), min_len=64,
                         valid_chroms=["20"], workers=1, progress=False))
    return root / "pack"


def nucleotron(*args, env=None, timeout=300):
    env = {k: v for k, v in (env or os.environ).items() if k != "TRITON_INTERPRET"}  # CPU runs: Gengram's torch path
    return subprocess.run(["nucleotron", *args], capture_output=True, text=True, env=env, timeout=timeout)


def train_losses(run_dir: Path):
    """step -> loss of the last logged occurrence (a resumed run logs the steps after its checkpoint again)."""
    losses, valid = {}, None
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == "train":
            losses[record["step"]] = record["loss"]
        elif record["kind"] == "valid":
            valid = record
    return losses, valid


class Background:
    """A command that runs while other tests go on (the Slurm job's requeue waits leave the CPUs idle)."""

    def __init__(self, args, log: Path, **env_vars: str):
        self.log = log
        with open(log, "w") as handle:  # a file, not a pipe: nobody reads while it runs
            env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # as nucleotron() does
            env.update(env_vars)
            self.proc = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=env)

    def wait(self, timeout=600) -> None:
        self.proc.wait(timeout=timeout)
        assert self.proc.returncode == 0, self.log.read_text()[-5000:]


@pytest.fixture(scope="module")
def reference(packs, tmp_path_factory):
    """The uninterrupted run: `nucleotron launch local --nproc 2` (torchrun, gloo), started in the background;
    calling the fixture's value waits for it and returns its run dir."""
    root = tmp_path_factory.mktemp("local")
    run_dir = root / "run"
    run = Background(["nucleotron", "launch", "local", "--nproc", "2", "--config", CONFIG, f"data.packs={packs}",
                      f"run.dir={run_dir}", *TRAIN], root / "torchrun.log")

    def finished() -> Path:
        run.wait()
        return run_dir

    yield finished
    if run.proc.poll() is None:
        run.proc.kill()
        run.proc.wait()


@pytest.fixture(scope="module")
def slurm():
    try:
        cluster = SlurmCluster().start()
    except SlurmUnavailable as err:
        if os.environ.get("NUCLEOTRON_REQUIRE_SLURM") == "1":
            pytest.fail(f"Slurm is required here (NUCLEOTRON_REQUIRE_SLURM=1) but: {err}")
        pytest.skip(f"no Slurm: {err}")
    yield cluster
    cluster.stop()


def wait_for(condition, what, timeout, cluster):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{cluster.logs()}")


def latest_step(run_dir: Path) -> int:
    latest = run_dir / "checkpoints" / "latest"
    match = re.search(r"(\d+)$", latest.read_text().strip()) if latest.exists() else None
    return int(match.group(1)) if match else 0


def test_sbatch_reads_a_hostile_job_name_literally(slurm, tmp_path):
    name = 'x"; $(touch {m}) `touch {m}` #c \\ \'q\''.format(m=tmp_path / "pwned")
    out = nucleotron("launch", "slurm", "--config", CONFIG, "--gpus-per-node", "0", "--job-name", name,
                     "--sbatch-arg=--hold", f"data.packs={tmp_path}", f"run.dir={tmp_path / 'run'}",
                     env=slurm.env, timeout=60)
    # data.packs has no manifest: the launcher refuses before sbatch, naming the setting
    assert out.returncode == 2 and "data.packs" in out.stderr
    (tmp_path / "manifest.json").write_text("{}")
    out = nucleotron("launch", "slurm", "--config", CONFIG, "--gpus-per-node", "0", "--job-name", name,
                     "--sbatch-arg=--hold", f"data.packs={tmp_path}", f"run.dir={tmp_path / 'run'}",
                     env=slurm.env, timeout=60)
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip()
    try:
        assert slurm.run("squeue", "-h", "-j", job, "-o", "%j").stdout.rstrip("\n") == name
        again = nucleotron("launch", "slurm", "--config", CONFIG, "--gpus-per-node", "0",
                           f"data.packs={tmp_path}", f"run.dir={tmp_path / 'run'}", env=slurm.env, timeout=60)
        assert again.returncode == 2 and f"job {job}" in again.stderr  # one live job per run dir
    finally:
        slurm.run("scancel", job)
    assert not (tmp_path / "pwned").exists()


def test_slurm_job_requeues_resumes_and_matches_uninterrupted_run(reference, slurm, packs, tmp_path):
    run_dir = tmp_path / "run"
    out = nucleotron("launch", "slurm", "--config", CONFIG, "--gpus-per-node", "0", "--ntasks-per-node", "2",
                     "--time", "15", "--signal-lead", "120", "--job-name", "e2e-requeue", f"data.packs={packs}",
                     f"run.dir={run_dir}", *TRAIN, env=slurm.env, timeout=60)
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip()
    log = run_dir / "slurm" / f"slurm-{job}.out"

    def log_text():
        return log.read_text(errors="replace") if log.exists() else ""

    # 1. preemption from outside: scontrol requeue (SIGTERM, then SIGKILL after KillWait) after the first checkpoint
    wait_for(lambda: latest_step(run_dir) >= 2, "the first checkpoint", 240, slurm)
    slurm.run("scontrol", "requeue", job)
    wait_for(lambda: "SLURM_RESTART_COUNT=1" in log_text(), "the first restart", 240, slurm)
    resumed_at = latest_step(run_dir)
    # 2. the time-limit path: USR1 to the job steps, as `--signal=USR1@lead` sends it; training saves and exits 75,
    # the batch script requeues the job itself
    wait_for(lambda: latest_step(run_dir) > resumed_at, "a checkpoint after the restart", 240, slurm)
    slurm.run("scancel", "--signal=USR1", job)
    wait_for(lambda: slurm.job(job).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"),
             "the job to finish", 300, slurm)

    text = log_text()
    state = slurm.job(job)
    assert state["JobState"] == "COMPLETED" and state["ExitCode"] == "0:0", text[-4000:]
    assert state["Restarts"] == "2", text[-4000:]
    assert "SLURM_RESTART_COUNT=1" in text and "SLURM_RESTART_COUNT=2" in text
    assert "exit 75); requeueing job" in text  # the USR1 path went through the script's own requeue
    got_losses, got_valid = train_losses(run_dir)
    want_losses, want_valid = train_losses(reference())
    assert got_losses == want_losses
    assert got_valid == want_valid


def test_a_dnahnet_job_requeues_and_resumes_like_a_gpt_job(slurm, packs, tmp_path):
    """A DeepSpeed-engine run submitted with `launch slurm`, requeued from outside after its first checkpoint,
    finishes with the losses of a straight `nucleotron train` run of the same config."""
    straight = Background(["nucleotron", "train", "--config", HNET, f"data.packs={packs}",
                           f"run.dir={tmp_path / 'straight'}", *HNET_TRAIN], tmp_path / "straight.log",
                          OMP_NUM_THREADS="1")  # as the batch script sets it for one CPU per task: same sums
    run_dir = tmp_path / "run"
    out = nucleotron("launch", "slurm", "--config", HNET, "--gpus-per-node", "0", "--ntasks-per-node", "1",
                     "--time", "15", "--job-name", "e2e-hnet", f"data.packs={packs}", f"run.dir={run_dir}",
                     *HNET_TRAIN, env=slurm.env, timeout=60)
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip()
    wait_for(lambda: latest_step(run_dir) >= 4, "the first checkpoint", 240, slurm)
    slurm.run("scontrol", "requeue", job)
    wait_for(lambda: slurm.job(job).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"),
             "the job to finish", 300, slurm)
    text = (run_dir / "slurm" / f"slurm-{job}.out").read_text(errors="replace")
    state = slurm.job(job)
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", text[-4000:]
    assert "SLURM_RESTART_COUNT=1" in text and "arch: hnet" in (run_dir / "config.yaml").read_text()
    straight.wait()
    assert train_losses(run_dir) == train_losses(tmp_path / "straight")


def test_launch_local_trains_with_two_processes(reference):
    losses, valid = train_losses(reference())
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert valid is not None and valid["step"] == STEPS
    assert losses[STEPS] < losses[1]  # it learned something
