"""Start `python -m nucleotron...` / `python -c CODE` test processes from a warm parent instead of a cold interpreter.

Most of the suite's CPU time went into ~100 processes that each import torch, megatron-core and DeepSpeed (10-11 s of
CPU) to train a tiny model for a few seconds. A zygote process imports them once (per test worker) and forks a child
for each command: the child is a real process with its own PID, session, environment, working directory and
standard streams, it runs the command as `python` would (`runpy` / `exec` as `__main__`, then non-daemon threads,
atexit handlers and stream flushes), and the zygote reports how it ended (exit status, or minus the signal that
killed it). Signals, exit codes, files and logs are those of a fresh process; what is shared is what importing left.

`run` and `Popen` take subprocess's arguments. Each distinct set of variables read at import time (TRITON_INTERPRET,
CUDA_VISIBLE_DEVICES, PYTHON*, ...) gets its own zygote started with them; anything else falls back to subprocess:
another executable, or a command that could see a CUDA device (a forked child cannot use CUDA). OMP_NUM_THREADS is
applied in the child (torch.set_num_threads), so thread counts, and with them floating-point sums, are those of a fresh
process. `run_ranks` starts N ranks the way torchrun does, minus its agent.

Not shared with a fresh process: the hash seed (every child has the zygote's), warnings already shown once while
importing, and the process's command line in /proc (the zygote's).
"""
from __future__ import annotations

import atexit
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
from pathlib import Path
from typing import Dict, List, Optional

# What the training, scoring and analysis commands import; loaded once in the zygote.
PRELOAD = ("torch", "megatron.core", "torch.distributed.checkpoint", "megatron.core.dist_checkpointing",
           "nucleotron.launch.cli", "nucleotron.train.cli", "nucleotron.train.trainer",
           "nucleotron.train.engines.megatron", "nucleotron.train.engines.deepspeed", "nucleotron.train.engines.focus",
           "nucleotron.infer.score", "nucleotron.infer.analyze", "wandb")
# Read while importing, so a child must see the zygote's values: each distinct set of them gets its own zygote.
IMPORT_TIME = ("TRITON_", "CUDA_VISIBLE_DEVICES", "PYTHON", "TORCH_", "NVTE_", "DS_", "LD_", "MKL_", "OMP_PROC_BIND",
               "KMP_")


def _import_time_environment(env: Dict[str, str]) -> Dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME)}


# ---------------------------------------------------------------------------------------------------- the zygote


def _open_output(spec: dict) -> int:
    """A captured stream is a fresh file; a file the caller passed is appended to (it may hold earlier output)."""
    mode = os.O_APPEND if spec["append"] else os.O_TRUNC
    return os.open(spec["path"], os.O_WRONLY | os.O_CREAT | mode, 0o644)


def _child(request: dict, protocol_fds: List[int], ready: int) -> None:
    """In the forked child: become the requested process, run the command, exit as python would."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if request["new_session"]:
            os.setsid()
        for fd in protocol_fds:
            os.close(fd)
        stdin = os.open(os.devnull, os.O_RDONLY)
        stdout = _open_output(request["stdout"])
        stderr = stdout if request["stderr"] == request["stdout"] else _open_output(request["stderr"])
        for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(fd, target)
        for fd in {stdin, stdout, stderr} - {0, 1, 2}:
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        if os.environ.get("OMP_NUM_THREADS", "").isdigit():
            import torch

            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        os.write(ready, b"1")
        os.close(ready)
        flag, *rest = request["argv"]
        if flag == "-m":
            sys.path[0] = os.getcwd()  # as python -m sets it (the zygote's is tests/)
            sys.argv = list(rest)
            sys.modules.pop(rest[0], None)  # python -m runs the module as __main__ before anything imports it
            runpy.run_module(rest[0], run_name="__main__", alter_sys=True)
        elif flag == "-c":
            sys.path[0] = ""
            main = types.ModuleType("__main__")
            sys.modules["__main__"] = main
            sys.argv = ["-c", *rest[1:]]
            exec(compile(rest[0], "<string>", "exec"), main.__dict__)
        else:  # a script
            sys.path[0] = os.path.dirname(os.path.abspath(flag))
            sys.argv = [flag, *rest]
            runpy.run_path(flag, run_name="__main__")
        code = 0
    except SystemExit as stop:
        if stop.code is None:
            code = 0
        elif isinstance(stop.code, int):
            code = stop.code
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            threading._shutdown()
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> None:
    """The zygote: import PRELOAD, then fork a child per request line on stdin; report PIDs and exit statuses."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything the zygote itself prints goes to stderr, not into the protocol
    requests = sys.stdin.buffer
    ids: Dict[int, int] = {}
    replies.write(json.dumps({"ready": os.getpid()}) + "\n")
    pending = b""
    while True:
        readable, _, _ = select.select([requests], [], [], 0.05)
        if readable:
            chunk = os.read(requests.fileno(), 65536)
            if not chunk:
                break
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                sys.stdout.flush()
                sys.stderr.flush()
                ready, child_ready = os.pipe()
                pid = os.fork()
                if pid == 0:
                    os.close(ready)
                    _child(request, [requests.fileno(), replies.fileno()], child_ready)
                os.close(child_ready)
                os.read(ready, 1)  # as Popen returns: the child has its session, streams, directory, environment
                os.close(ready)
                ids[pid] = request["id"]
                replies.write(json.dumps({"id": request["id"], "pid": pid}) + "\n")
        while ids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            replies.write(json.dumps({"id": ids.pop(pid), "returncode": os.waitstatus_to_exitcode(status)}) + "\n")
    for pid in ids:  # the test process went away: take the children with it
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------------------------------------- the client


class _Zygote:
    """A zygote for one import-time environment, started on first use; forks the commands sent to it."""

    def __init__(self, env: Dict[str, str]):
        self.log = tempfile.NamedTemporaryFile(prefix="warm-python-zygote-", suffix=".log", delete=False)
        atexit.register(Path(self.log.name).unlink, missing_ok=True)
        self.process = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.log, env=env,
                                        cwd=str(Path(__file__).parent))
        self.lock = threading.Lock()
        self.next_id = 0
        self.started: Dict[int, threading.Event] = {}
        self.pids: Dict[int, int] = {}
        self.ended: Dict[int, threading.Event] = {}
        self.returncodes: Dict[int, int] = {}
        ready = json.loads(self.process.stdout.readline() or b"{}")
        if "ready" not in ready:
            raise RuntimeError(f"tests/warm_python.py: the zygote did not start; its output:\n"
                               f"{Path(self.log.name).read_text()[-3000:]}")
        threading.Thread(target=self._read_replies, daemon=True).start()

    def _read_replies(self) -> None:
        for line in self.process.stdout:
            reply = json.loads(line)
            if "pid" in reply:
                self.pids[reply["id"]] = reply["pid"]
                self.started[reply["id"]].set()
            else:
                self.returncodes[reply["id"]] = reply["returncode"]
                self.ended[reply["id"]].set()
        # The zygote is gone (it kills its children on the way out): nobody will report them, so they end here.
        for request_id, ended in list(self.ended.items()):
            if not ended.is_set():
                self.returncodes[request_id] = -9
                ended.set()

    def start(self, argv: List[str], env: Dict[str, str], cwd: str, stdout: dict, stderr: dict,
              new_session: bool) -> int:
        """Fork the command; its request id once the child is set up."""
        with self.lock:
            self.next_id += 1
            request_id = self.next_id
            self.started[request_id], self.ended[request_id] = threading.Event(), threading.Event()
            request = dict(id=request_id, argv=argv, env=env, cwd=cwd, stdout=stdout, stderr=stderr,
                           new_session=new_session)
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
        if not self.started[request_id].wait(60):
            raise RuntimeError("tests/warm_python.py: the zygote did not fork within 60 s")
        return request_id


_zygotes: Dict[str, _Zygote] = {}
_zygote_lock = threading.Lock()


class WarmProcess:
    """The subset of subprocess.Popen the tests use, for a child of the zygote."""

    def __init__(self, zygote: _Zygote, request_id: int, args: List[str], capture: List[Optional[str]], text: bool):
        self._zygote, self._id = zygote, request_id
        self.pid = zygote.pids[request_id]
        self.args = args
        self.returncode: Optional[int] = None
        self._capture = capture  # [stdout file, stderr file] for streams given as PIPE, else None
        self._text = text

    def poll(self) -> Optional[int]:
        if self.returncode is None and self._zygote.ended[self._id].is_set():
            self.returncode = self._zygote.returncodes[self._id]
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        if not self._zygote.ended[self._id].wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.poll()

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(15)

    def kill(self) -> None:
        self.send_signal(9)

    def _read(self, path: Optional[str]):
        if path is None:
            return None
        data = Path(path).read_bytes()
        return data.decode(errors="replace") if self._text else data

    def communicate(self, timeout: Optional[float] = None):
        self.wait(timeout)
        out, err = (self._read(path) for path in self._capture)
        for path in filter(None, self._capture):
            Path(path).unlink(missing_ok=True)
        self._capture = [None, None]
        return out, err

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.poll() is None:
            self.kill()
            self.wait()


def _servable(command: List[str], env: Dict[str, str]) -> bool:
    """A python -m / -c / script command that runs on the CPU (a forked child cannot use CUDA initialised before the
    fork; the zygote never initialises it when no device is visible)."""
    import torch

    return (len(command) >= 2 and command[0] == sys.executable
            and (command[1] in ("-m", "-c") and len(command) >= 3 or command[1].endswith(".py"))
            and (env.get("CUDA_VISIBLE_DEVICES") == "" or not torch.cuda.is_available())
            and os.environ.get("NUCLEOTRON_TESTS_COLD") != "1")


def _get_zygote(command: List[str], env: Dict[str, str]) -> Optional[_Zygote]:
    """The zygote started with this command's import-time environment (one per distinct environment)."""
    if not _servable(command, env):
        return None
    key = json.dumps(_import_time_environment(env), sort_keys=True)
    with _zygote_lock:
        if key not in _zygotes or _zygotes[key].process.poll() is not None:
            _zygotes[key] = _Zygote(env)
        return _zygotes[key]


def Popen(command: List[str], *, stdout=None, stderr=None, text: bool = False, env: Optional[dict] = None,
          cwd=None, start_new_session: bool = False):
    """subprocess.Popen(command, ...) through the zygote when it can serve the command (stdout/stderr: PIPE is
    captured to a file and returned by communicate(), a file object is written directly, None is discarded)."""
    env = dict(os.environ if env is None else env)
    zygote = _get_zygote(list(command), env)
    if zygote is None:
        return subprocess.Popen(command, stdout=stdout, stderr=stderr, text=text, env=env, cwd=cwd,
                                start_new_session=start_new_session)
    capture: List[Optional[str]] = [None, None]

    def target(stream, index):
        if stream == subprocess.PIPE:
            handle, path = tempfile.mkstemp(prefix="warm-python-")
            os.close(handle)
            capture[index] = path
            return dict(path=path, append=False)
        if stream == subprocess.STDOUT:
            return None
        if stream is None:  # inherit: the test process's own stream
            stream = sys.stdout if index == 0 else sys.stderr
        stream.flush()
        return dict(path=f"/proc/{os.getpid()}/fd/{stream.fileno()}", append=True)

    out_path = target(stdout, 0)
    err_path = target(stderr, 1) or out_path
    request_id = zygote.start(list(command[1:]), env, str(cwd or os.getcwd()), out_path, err_path, start_new_session)
    return WarmProcess(zygote, request_id, list(command), capture, text)


def run(command: List[str], *, capture_output: bool = False, text: bool = False, timeout: Optional[float] = None,
        env: Optional[dict] = None, cwd=None) -> subprocess.CompletedProcess:
    """subprocess.run(command, ...) through the zygote when it can serve the command (else a subprocess)."""
    pipe = subprocess.PIPE if capture_output else None
    process = Popen(command, stdout=pipe, stderr=pipe, text=text, env=env, cwd=cwd)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return subprocess.CompletedProcess(list(command), process.returncode, out, err)



def run_ranks(command: List[str], world: int, *, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node WORLD` minus the agent: WORLD children of the zygote with the
    rendezvous variables torchrun sets (env://), stdout and stderr of all ranks joined in rank order; when a rank
    fails the others are stopped, and the first failure's exit status is returned, as torchrun does."""
    from distributed import free_port

    port = free_port()
    ranks = []
    for rank in range(world):
        rank_env = dict(env, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                        LOCAL_WORLD_SIZE=str(world), GROUP_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        ranks.append(Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=rank_env))
    deadline = time.monotonic() + timeout
    failed = None
    while any(p.poll() is None for p in ranks):
        failed = failed or next((p for p in ranks if p.poll() not in (None, 0)), None)
        if failed or time.monotonic() > deadline:
            for p in ranks:
                p.kill()
        time.sleep(0.05)
    outputs = [p.communicate() for p in ranks]
    if time.monotonic() > deadline and failed is None:
        raise subprocess.TimeoutExpired(command, timeout)
    failed = failed or next((p for p in ranks if p.returncode != 0), None)
    return subprocess.CompletedProcess(list(command), failed.returncode if failed else 0,
                                       "".join(out for out, _ in outputs), "".join(err for _, err in outputs))


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    serve()
