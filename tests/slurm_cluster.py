"""A real single-node Slurm (munged + slurmctld + slurmd) on localhost, for the launcher's end-to-end tests.

The recipe is the tested one in ../shared/reference/slurm-ci.md: Debian packages, daemons started by hand (no systemd),
no cgroups, a short credential lifetime so a requeued job restarts in ~7 s instead of ~150 s. Each daemon this module
starts is recorded in ROOT/pids and stopped by that PID, never by name; a munged that was already running is reused
and left alone. The ports are picked free, so a cluster already on this machine is not disturbed.

    python tests/slurm_cluster.py install          # apt-get the packages when missing (root)
    python tests/slurm_cluster.py up [ROOT]        # start; prints `export SLURM_CONF=...`
    python tests/slurm_cluster.py down [ROOT]      # cancel jobs, stop what `up` started (by PID)
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DEFAULT_ROOT = Path(os.environ.get("NUCLEOTRON_SLURM_DIR", f"/tmp/nucleotron-slurm-{os.getuid()}"))
MUNGE_PID = Path("/run/munge/munged.pid")
# A requeued job waits out the job credential's lifetime before it restarts (default 120 s). Measured on Slurm 22.05:
# 5 s gives a restart ~7 s after the requeue (10 s: ~12 s); 3 or 4 fall back to the default (~122 s).
CRED_EXPIRE = 5


class SlurmUnavailable(RuntimeError):
    """Slurm cannot run here (not root, no apt-get, install or start failed); the message says which."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def install_packages() -> None:
    """apt-get the four Debian packages when slurmctld is missing (about 10 s); needs root."""
    daemons = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged")
    if all(Path(path).exists() for path in daemons) and shutil.which("sbatch"):
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable("Slurm is not installed and installing it needs root "
                               f"(apt-get install {' '.join(PACKAGES)})")
    if not shutil.which("apt-get"):
        raise SlurmUnavailable("Slurm is not installed and there is no apt-get to install it with")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode:
            raise SlurmUnavailable(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()[-500:]}")


def _slurm_conf(root: Path, cpus: int, mem_mb: int, ctld_port: int, slurmd_port: int) -> str:
    """The recipe's slurm.conf, with free ports, CRED_EXPIRE, and KillWait=10 (SIGTERM to SIGKILL on a requeue)."""
    return f"""ClusterName=nucleotron-ci
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire={CRED_EXPIRE}
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=5,sched_interval=5
MailProg=/bin/true
ReturnToService=2
JobRequeue=1
KillWait=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _munge_works() -> bool:
    return subprocess.run(["munge", "-n"], capture_output=True).returncode == 0


def _start_munge() -> Optional[int]:
    """Reuse a running munged; otherwise start one as the munge user and return its PID (it daemonizes)."""
    if _munge_works():
        return None
    key = Path("/etc/munge/munge.key")
    if not key.exists() or key.stat().st_size == 0:
        subprocess.run(["/usr/sbin/mungekey", "--create", "--force"], check=True)
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
    for folder in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.chown(folder, "munge", "munge")
    Path("/run/munge").chmod(0o755)
    subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
    for _ in range(50):
        if _munge_works():
            return int(MUNGE_PID.read_text().split()[0])
        time.sleep(0.1)
    raise SlurmUnavailable("munged started but `munge -n` still fails; see /var/log/munge/munged.log")


class SlurmCluster:
    """Handle on a running cluster: `env` is os.environ plus SLURM_CONF, for sbatch/squeue/scontrol/srun."""

    def __init__(self, root: Path = DEFAULT_ROOT):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        # sbatch passes this environment to jobs: no TRITON_INTERPRET (CPU training takes Gengram's PyTorch path)
        self.env: Dict[str, str] = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        self.env["SLURM_CONF"] = str(self.conf)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(list(cmd), capture_output=True, text=True, env=self.env, timeout=60)
        if check and out.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")
        return out

    def job(self, job_id: str) -> Dict[str, str]:
        """`scontrol show job` as key -> value (JobState, Restarts, ExitCode, ...)."""
        text = self.run("scontrol", "-o", "show", "job", job_id).stdout
        return dict(part.split("=", 1) for part in text.split() if "=" in part)

    def logs(self, lines: int = 30) -> str:
        texts = []
        for log in sorted((self.root / "log").glob("*")):
            texts.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(texts)

    def _record(self, name: str, pid: int) -> None:
        with open(self.root / "pids", "a") as handle:
            handle.write(f"{name} {pid}\n")

    def start(self) -> "SlurmCluster":
        """Fresh state, free ports, daemons up and the node idle (about 2 s once packages are installed)."""
        if os.geteuid() != 0:
            raise SlurmUnavailable("starting slurmd needs root")
        install_packages()
        stop(self.root)  # whatever an earlier, killed session left in this folder
        shutil.rmtree(self.root, ignore_errors=True)
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        munge_pid = _start_munge()
        if munge_pid:
            self._record("munged", munge_pid)
        mem = int(open("/proc/meminfo").read().split()[1]) // 1024 * 9 // 10
        self.conf.write_text(_slurm_conf(self.root, os.cpu_count() or 1, mem, _free_port(), _free_port()))
        for name, cmd in (("slurmctld", ["slurmctld", "-D"]), ("slurmd", ["slurmd", "-D", "-N", "localhost"])):
            log = open(self.root / "log" / f"{name}.out", "w")
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
            self._record(name, proc.pid)
        for _ in range(150):
            state = self.run("sinfo", "-h", "-n", "localhost", "-o", "%t", check=False).stdout.strip()
            if state == "idle":
                return self
            time.sleep(0.2)
        logs = self.logs()
        self.stop()
        raise SlurmUnavailable(f"Slurm did not come up (node state {state!r}):\n{logs}")

    def stop(self) -> None:
        stop(self.root)


def _pid_alive(pid: int) -> bool:
    """True while the process runs; reaps it first when it is our own child (a zombie is not alive)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_gone(pids: List[int], seconds: float) -> List[int]:
    deadline = time.monotonic() + seconds
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _pid_alive(pid)]
        time.sleep(0.1)
    return pids


def stop(root: Path = DEFAULT_ROOT) -> None:
    """Cancel this cluster's jobs, then stop the daemons listed in ROOT/pids (by PID: TERM, then KILL)."""
    root = Path(root)
    pid_file = root / "pids"
    if not pid_file.exists():
        return
    started = [line.split() for line in pid_file.read_text().splitlines() if line.strip()]
    env = dict(os.environ, SLURM_CONF=str(root / "slurm.conf"))
    if any(name == "slurmctld" and _pid_alive(int(pid)) for name, pid in started):
        subprocess.run(["scancel", "--full", "--state=RUNNING,PENDING,SUSPENDED", "-u", "root"],
                       capture_output=True, env=env, timeout=30)
        for _ in range(100):  # let the job processes end before slurmd goes (they would be orphaned)
            queue = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, env=env, timeout=30)
            if queue.returncode or not queue.stdout.strip():
                break
            time.sleep(0.2)
    order = {"slurmd": 0, "slurmctld": 1, "munged": 2}
    for name, pid in sorted(started, key=lambda item: order.get(item[0], 3)):
        pid = int(pid)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            if _wait_gone([pid], 10):
                os.kill(pid, signal.SIGKILL)
                _wait_gone([pid], 5)
    pid_file.unlink()


def main(argv: List[str]) -> int:
    if not argv or argv[0] not in ("install", "up", "down"):
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(argv[1]) if len(argv) > 1 else DEFAULT_ROOT
    try:
        if argv[0] == "install":
            install_packages()
        elif argv[0] == "up":
            cluster = SlurmCluster(root).start()
            print(f"export SLURM_CONF={cluster.conf}")
        else:
            stop(root)
    except SlurmUnavailable as err:
        print(f"slurm_cluster: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
