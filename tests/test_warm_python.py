"""tests/warm_python.py, the suite's process starter, against the real thing: a command forked from the zygote must
look to itself and to the test like the same command started by subprocess."""
import json
import os
import signal
import subprocess
import sys

import warm_python
from train_runs import training_env

PROBE = """
import json, os, sys, torch
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "name": __name__, "path0": sys.path[0],
                  "threads": torch.get_num_threads(), "marker": os.environ.get("WARM_PROBE"),
                  "session_leader": os.getsid(0) == os.getpid()}))
print("to stderr", file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""


def test_a_forked_command_sees_what_a_fresh_process_sees(tmp_path):
    env = dict(training_env(), OMP_NUM_THREADS="2", WARM_PROBE="yes")
    command = [sys.executable, "-c", PROBE, "3", "extra"]
    cold = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    warm = warm_python.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert (warm.returncode, warm.stderr) == (cold.returncode, cold.stderr) == (3, "to stderr\n")
    assert json.loads(warm.stdout) == json.loads(cold.stdout)
    assert json.loads(warm.stdout)["threads"] == 2 and json.loads(warm.stdout)["argv"] == ["-c", "3", "extra"]


def test_a_module_command_runs_as_main_with_its_exit_status(tmp_path):
    warm = warm_python.run([sys.executable, "-m", "nucleotron.launch.cli", "train", "--config", str(tmp_path / "no")],
                           capture_output=True, text=True, env=training_env(), cwd=tmp_path, timeout=120)
    cold = subprocess.run([sys.executable, "-m", "nucleotron.launch.cli", "train", "--config", str(tmp_path / "no")],
                          capture_output=True, text=True, env=training_env(), cwd=tmp_path, timeout=120)
    assert warm.returncode == cold.returncode == 2
    assert warm.stderr.splitlines()[-1] == cold.stderr.splitlines()[-1] and str(tmp_path / "no") in warm.stderr


def test_a_signal_to_the_session_ends_it_as_it_would_a_fresh_process():
    process = warm_python.Popen([sys.executable, "-c", "import time\ntime.sleep(600)"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=training_env(), start_new_session=True)
    assert os.getsid(process.pid) == process.pid and process.poll() is None  # a session of its own, as Popen's
    os.killpg(process.pid, signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGTERM


def test_a_variable_read_at_start_up_gets_a_zygote_started_with_it():
    """PYTHONWARNINGS is read when the interpreter starts: the child must come from a zygote that started with it."""
    command = [sys.executable, "-c", "import sys; print(sys.warnoptions)"]
    env = dict(training_env(), PYTHONWARNINGS="ignore::UserWarning")
    warm = warm_python.run(command, capture_output=True, text=True, env=env, timeout=120)
    cold = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert warm.stdout == cold.stdout == "['ignore::UserWarning']\n"


def test_other_programs_run_as_subprocesses():
    other = warm_python.Popen(["true"], env=training_env())
    assert isinstance(other, subprocess.Popen) and other.wait(timeout=60) == 0
