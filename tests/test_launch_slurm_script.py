"""The rendered sbatch script, without Slurm: it parses, carries the requeue/signal directives, keeps hostile values
literal, and its requeue logic does the right thing for each training exit status (srun, scontrol and the training
command are stand-ins on PATH that record what they were given). The script does not depend on the model family:
the checks that run it are repeated for a dnaHNet config (model.arch=hnet, DeepSpeed), whose frozen config must
reload to the same H-Net."""
import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from nucleotron.configs.exit_codes import REQUEUE_EXIT_CODE
from nucleotron.launch.quoting import LaunchError, directive, sbatch_value
from nucleotron.launch.run_spec import prepare_run
from nucleotron.launch.slurm_options import SlurmOptions, check
from nucleotron.launch.slurm_script import render_job

CONFIG = "configs/experiments/tiny-cpu.yaml"
HNET = "configs/models/dnahnet-tiny.yaml"
BOTH = pytest.mark.parametrize("config", [CONFIG, HNET], ids=["gpt", "hnet"])
HOSTILE = "x y;z $(touch {m}) `touch {m}` 'q' \"d\" #h \\b &|>"


def render(tmp_path, options=None, overrides=(), config=CONFIG):
    spec = prepare_run(config, [f"run.dir={tmp_path / 'run'}", *overrides], workdir=tmp_path)
    return spec, render_job(spec, check(options or SlurmOptions(gpus_per_node=0)))


def directives(script):
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


@BOTH
@pytest.mark.parametrize("options", [SlurmOptions(gpus_per_node=0, ntasks_per_node=2, time="1:00:00"),
                                     SlurmOptions(nodes=4, gpus_per_node=8, partition="gpu", account="dna",
                                                  qos="high", exclusive=True, cpus_per_task=12),
                                     SlurmOptions(nodes=2, launcher="torchrun", container_image="/i/n.sqsh",
                                                  container_mounts="/lustre:/lustre")])
def test_script_parses_and_is_preemption_safe(tmp_path, options, config):
    spec, script = render(tmp_path, options, config=config)
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    lines = directives(script)
    assert "#SBATCH --requeue" in lines and "#SBATCH --open-mode=append" in lines
    lead = "B:USR1@300" if options.launcher == "torchrun" else "USR1@300"
    assert f"#SBATCH --signal={lead}" in lines
    assert f"#SBATCH --nodes={options.nodes}" in lines
    assert any(line.startswith("#SBATCH --output=") and line.endswith("/run/slurm/slurm-%j.out") for line in lines)
    assert 'scontrol requeue "$SLURM_JOB_ID"' in script and f"REQUEUE_EXIT_CODE={REQUEUE_EXIT_CODE}" in script
    assert f"TRAIN=(nucleotron train --config {spec.frozen_config} run.dir={spec.run_dir})" in script
    # directives must all come before the first command, or sbatch ignores them
    first_command = next(i for i, line in enumerate(script.splitlines()) if line and not line.startswith("#"))
    assert all(i < first_command for i, line in enumerate(script.splitlines()) if line.startswith("#SBATCH"))


def test_gpu_and_cpu_jobs_differ_where_they_should(tmp_path):
    _, gpu = render(tmp_path, SlurmOptions(nodes=2, gpus_per_node=8))
    assert "#SBATCH --gpus-per-node=8" in directives(gpu) and "#SBATCH --ntasks-per-node=8" in directives(gpu)
    assert "CUDA_DEVICE_MAX_CONNECTIONS" in gpu and "TRITON_INTERPRET" not in gpu
    _, cpu = render(tmp_path, SlurmOptions(gpus_per_node=0, ntasks_per_node=3))
    assert not any("--gpus" in line for line in directives(cpu)) and "#SBATCH --ntasks-per-node=3" in directives(cpu)
    assert "NCCL" not in cpu and "TRITON_INTERPRET" not in cpu  # CPU jobs take Gengram's PyTorch path


def test_sbatch_values_are_quoted_for_sbatch_not_for_bash():
    assert sbatch_value("gpu-h200", "--partition") == "gpu-h200"
    assert sbatch_value('a "b" #c \\d', "--job-name") == '"a \\"b\\" \\#c \\\\d"'
    with pytest.raises(LaunchError, match="--job-name"):
        directive("--job-name", "ok\n#SBATCH --wrap=boom")
    with pytest.raises(LaunchError, match="--name"):
        directive("--x; rm", "1")


def test_newline_in_an_override_cannot_escape_a_comment(tmp_path):
    with pytest.raises(LaunchError, match="control character"):
        render(tmp_path, overrides=["run.name=a\necho pwned"])


FAKES = {
    "srun": """#!/bin/bash
printf '%s\\0' "$@" > "$FAKE_DIR/srun.args"
while [ $# -gt 0 ] && [[ $1 == --* ]]; do shift; done   # srun's own options
SLURM_PROCID=1 SLURM_NTASKS=2 SLURM_LOCALID=1 exec "$@"
""",
    "scontrol": """#!/bin/bash
case "$1" in
  show) printf 'node-a\\nnode-b\\n' ;;
  requeue) echo "$2" >> "$FAKE_DIR/requeued" ;;
esac
""",
    "nucleotron": """#!/bin/bash
printf '%s\\0' "$@" > "$FAKE_DIR/train.args"
echo "$RANK $WORLD_SIZE $LOCAL_RANK $MASTER_ADDR $MASTER_PORT $OMP_NUM_THREADS" > "$FAKE_DIR/train.env"
printf '%s' "${MY_NOTE:-}" > "$FAKE_DIR/note"
exit "$FAKE_EXIT"
""",
}


def run_with_fakes(tmp_path, script, exit_code):
    fake = tmp_path / "fake"
    fake.mkdir(exist_ok=True)
    for name, text in FAKES.items():
        (fake / name).write_text(text)
        (fake / name).chmod((fake / name).stat().st_mode | stat.S_IEXEC)
    (fake / "requeued").unlink(missing_ok=True)
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    # a submitting shell that set no thread count (the script's default, --cpus-per-task, yields to an exported one)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(PATH=f"{fake}:{os.environ['PATH']}", FAKE_DIR=str(fake), FAKE_EXIT=str(exit_code),
               SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="node-[a-b]", SLURM_NNODES="2", RANK="7")
    out = subprocess.run(["bash", str(path)], capture_output=True, text=True, env=env, timeout=60)
    return out, fake


def test_hostile_values_stay_literal_and_reach_training_intact(tmp_path):
    marker = tmp_path / "pwned"
    hostile = HOSTILE.format(m=marker)
    spec, script = render(tmp_path / hostile.replace("/", "_"),
                          SlurmOptions(gpus_per_node=0, job_name=hostile, env=[f"MY_NOTE={hostile}"]),
                          overrides=[f"run.name={hostile}"])
    out, fake = run_with_fakes(tmp_path, script, 0)
    assert out.returncode == 0, out.stderr
    assert not marker.exists()
    args = (fake / "train.args").read_text().split("\0")[:-1]
    assert args == ["train", "--config", str(spec.frozen_config), f"run.dir={spec.run_dir}"]
    assert (fake / "note").read_text() == hostile  # --env NAME=VALUE
    assert shlex.quote(f"run.name={hostile}") in script  # the original command, quoted, in a comment
    assert f"--job-name={sbatch_value(hostile, '--job-name')}" in script


@BOTH
def test_srun_tasks_get_torch_ranks_and_the_first_node_as_master(tmp_path, config):
    _, script = render(tmp_path, SlurmOptions(gpus_per_node=0, ntasks_per_node=2, cpus_per_task=3), config=config)
    out, fake = run_with_fakes(tmp_path, script, 0)
    assert out.returncode == 0, out.stderr
    rank, world, local, addr, port, threads = (fake / "train.env").read_text().split()
    assert (rank, world, local, addr, threads) == ("1", "2", "1", "node-a", "3")  # RANK=7 from outside is dropped
    assert int(port) == 20000 + 4242 % 20000
    srun_args = (fake / "srun.args").read_text().split("\0")
    assert "--ntasks-per-node=2" in srun_args and "--cpus-per-task=3" in srun_args
    assert "restart 0" in out.stdout


@BOTH
@pytest.mark.parametrize("exit_code, requeued, script_status", [(REQUEUE_EXIT_CODE, True, 0), (0, False, 0),
                                                                (1, False, 1)])
def test_requeue_happens_only_when_training_asks_for_it(tmp_path, exit_code, requeued, script_status, config):
    _, script = render(tmp_path, config=config)
    out, fake = run_with_fakes(tmp_path, script, exit_code)
    assert out.returncode == script_status, out.stdout + out.stderr
    assert (fake / "requeued").exists() == requeued
    if requeued:
        assert (fake / "requeued").read_text().split() == ["4242"]
        assert "requeueing job 4242" in out.stdout


def test_frozen_config_reloads_to_the_submitted_run(tmp_path):
    from nucleotron.configs import load_config
    spec, _ = render(tmp_path, overrides=["optim.lr=7e-4", "model.gengram.window=null", "data.packs=packs/8k"])
    frozen = load_config(spec.freeze())
    assert frozen.optim.lr == 7e-4 and frozen.model.gengram.window is None
    assert Path(frozen.run.dir) == spec.run_dir and Path(frozen.data.packs) == tmp_path / "packs/8k"


def test_hnet_frozen_config_reloads_to_the_submitted_dnahnet(tmp_path):
    """The job trains from RUN_DIR/slurm/config.yaml: the H-Net's nested layout, per-stage lists, ZeRO stage and
    overrides must come back exactly, and the run must still pick the DeepSpeed engine."""
    from nucleotron.configs import load_config
    from nucleotron.train.engine import ENGINES

    spec, _ = render(tmp_path, SlurmOptions(gpus_per_node=0, ntasks_per_node=2), config=HNET,
                     overrides=["parallel.zero_stage=3", "model.hnet.target_ratios=[2,2]", "data.packs=packs/gtdb"])
    frozen = load_config(spec.freeze())
    assert frozen.model == spec.cfg.model and frozen.parallel == spec.cfg.parallel
    assert frozen.model.arch == "hnet" and ENGINES[frozen.model.arch].endswith("deepspeed:DeepSpeedEngine")
    assert frozen.model.hnet.layout == ["m1", ["T1m1", ["T2"], "m1T1"], "m1"]
    assert frozen.model.hnet.target_ratios == [2.0, 2.0] and frozen.parallel.zero_stage == 3
    assert frozen.train == spec.cfg.train and frozen.optim == spec.cfg.optim
    assert Path(frozen.data.packs) == tmp_path / "packs/gtdb"


def test_hnet_dry_run_checks_the_batch_against_the_process_count(tmp_path, capsys):
    """`nucleotron launch slurm --dry-run` for a dnaHNet config: prints the script, and refuses, naming the
    settings, a process count that does not divide its global batch (dnahnet-tiny: 4 sequences of 2 per rank)."""
    from nucleotron.launch.slurm import main

    base = ["--config", HNET, "--gpus-per-node", "0", "--dry-run", f"run.dir={tmp_path / 'run'}"]
    assert main([*base, "--ntasks-per-node", "2"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --ntasks-per-node=2" in out and "#SBATCH --requeue" in out
    assert main([*base, "--ntasks-per-node", "3"]) == 2
    assert "train.global_batch_size=4 is not divisible by train.micro_batch_size=2 x data-parallel size 3" in \
        capsys.readouterr().err
