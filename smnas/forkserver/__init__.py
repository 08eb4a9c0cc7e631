"""A warm process that runs the workflow's jobs, so that torch is imported once, not per job.

Every job of the workflow is a new Python process, and on a laptop much of a short job is its
start-up: ``import torchvision`` alone takes 5-6 s on a 2-core machine (2 s of it ``torch._dynamo``,
pulled in by ``torchvision.ops``), longer than timing or evaluating a small candidate. Each of the
workflow's scripts therefore hands its work to :func:`run_job`, which runs it in a child forked
from a *fork server* that imported torch, torchvision, pandas and smnas once.

How it works:

- The first job starts the server (``python -m smnas.forkserver serve``: it detaches, imports, and
  listens on a Unix socket in a private folder, ``$SMNAS_FORKSERVER_DIR`` or ``$TMPDIR/smnas-<uid>``).
- A job connects, passes its stdin/stdout/stderr file descriptors, working directory, environment
  and the call (``"module:function"`` and its arguments). The server forks a child that takes them
  over, writes the job's log, runs the call, and exits; the server sends back its exit status.
- The job's own process waits, forwards SIGINT/SIGTERM/SIGHUP to the child, and exits with the
  child's status, so Snakemake sees an ordinary job. If the job's process dies, even by SIGKILL,
  the server kills the child's process group at once: nothing keeps writing after a kill.
- The server never runs a torch operation or touches CUDA, so each child starts as clean as a
  DataLoader worker forked on Linux. There is one server per user, interpreter, version of the
  smnas sources and of the preloaded packages, and set of environment variables that act at import
  (``CUDA_*``, ``LD_*``, ``PYTHON*``, ``TORCH*`` ...): edit the code and the next job starts a new
  server. A server with no job exits after ``$SMNAS_FORKSERVER_IDLE`` seconds (default 60).

It is off (the call runs in the job's own process, as it would without this module) outside
Linux, inside a SLURM job (each job has its own allocation: nothing to share), and when
``SMNAS_FORKSERVER=0``. ``python -m smnas.forkserver stop`` stops this user's servers.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import logging
import os
import pickle
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Iterator

ENABLE_ENV = "SMNAS_FORKSERVER"  # 0/off: never; auto (default): not inside a SLURM job; 1/on: always
DIR_ENV = "SMNAS_FORKSERVER_DIR"
IDLE_ENV = "SMNAS_FORKSERVER_IDLE"
DEFAULT_IDLE = 60.0
START_TIMEOUT = 300.0
# What every child finds imported. Jobs may import anything else themselves (it costs them).
PRELOAD = ("torch", "torchvision", "torchvision.models.detection", "pandas", "pyarrow.parquet",
           "pycocotools.cocoeval", "smnas.workflow.jobs", "smnas.workflow.generations", "smnas.engine.candidate",
           "smnas.search.evolution", "smnas.engine.cost", "smnas.report", "smnas.data.synthetic")
# Environment variables read when those packages are imported; the rest is read later, in the child.
IMPORT_ENV = re.compile(r"^(CUDA_|NVIDIA_|HIP_|ROCR?_|LD_|PYTHON|TORCH|PYTORCH_|KMP_|MKL_|OMP_|GOMP_|DNNL_|ONEDNN_|"
                        r"MPLBACKEND|MATPLOTLIB|ARROW_)")
THREAD_ENV = re.compile(r"_NUM_THREADS$")  # set per job; torch.set_num_threads in the job decides
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux

log = logging.getLogger(__name__)


class Unavailable(RuntimeError):
    """No fork server could be reached or started; the job then runs in its own process."""


# ---- the job's side ------------------------------------------------------------------------

def run_job(target: str, args: tuple = (), kwargs: dict[str, Any] | None = None, log_file: str | Path | None = None,
            start: bool = True) -> None:
    """Run ``target(*args, **kwargs)`` (``target`` is ``"package.module:function"``) as this job.

    ``log_file`` receives the job's log records (and stderr its copy). In a fork server's child
    when :func:`enabled`, else in this process; ``start=False`` (a job that needs no torch) uses a
    server only if one is running already. Returns if the call succeeded; otherwise exits this
    process with the job's status (1 for an exception, whose traceback is logged).
    """
    request = {"target": target, "args": tuple(args), "kwargs": dict(kwargs or {}),
               "log": str(log_file) if log_file else None}
    code = None
    if enabled():
        for _attempt in range(2):  # a second time if the server stopped (idle) as this job came
            try:
                sock = connect(start)
            except Unavailable as e:
                if start:
                    print(f"smnas: no fork server ({e}); this job imports torch itself", file=sys.stderr, flush=True)
                break
            with sock:
                code = _run_in_server(sock, request)
            if code is not None:
                break
    if code is None:
        code = execute(request)
    if code:
        sys.exit(code)


def enabled() -> bool:
    """Whether jobs go through a fork server here (see the module's docstring)."""
    value = os.environ.get(ENABLE_ENV, "auto").strip().lower()
    if value in ("0", "off", "false", "no"):
        return False
    if not sys.platform.startswith("linux") or not hasattr(socket, "send_fds"):
        return False
    if value in ("1", "on", "true", "yes"):
        return True
    if value != "auto":
        raise ValueError(f"environment variable {ENABLE_ENV}={value!r}: expected auto, 1/on or 0/off")
    return "SLURM_JOB_ID" not in os.environ


def _run_in_server(sock: socket.socket, request: dict[str, Any]) -> int | None:
    """The job's exit status, or None if the server did not start it (it was stopping)."""
    payload = pickle.dumps(request | {"cwd": os.getcwd(), "env": dict(os.environ), "path": list(sys.path)})
    with _std_fds() as fds:
        try:
            socket.send_fds(sock, [struct.pack("!Q", len(payload))], fds)
            sock.sendall(payload)
            pid = _receive(sock, b"P")
        except OSError:
            pid = None
    if pid is None:
        return None

    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        code = _receive(sock, b"X")
    except OSError:  # connection reset: the server died
        code = None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if code is None:  # the server died: do not leave the job running unwatched
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        print(f"smnas: the fork server went away while job {pid} ran; killed it", file=sys.stderr)
        return 1
    return code


@contextlib.contextmanager
def _std_fds() -> Iterator[list[int]]:
    """This process's stdin, stdout and stderr descriptors (/dev/null for a closed one)."""
    fds, opened = [], []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            opened.append(os.open(os.devnull, os.O_RDWR))
            fds.append(opened[-1])
    try:
        yield fds
    finally:
        for fd in opened:
            os.close(fd)


def _receive(sock: socket.socket, kind: bytes) -> int | None:
    """The number of a ``kind`` message (5 bytes: kind, int32), or None at end of stream."""
    data = b""
    while len(data) < 5:
        chunk = sock.recv(5 - len(data))
        if not chunk:
            return None
        data += chunk
    if data[:1] != kind:
        raise RuntimeError(f"fork server protocol: expected {kind!r}, got {data[:1]!r}")
    return struct.unpack("!i", data[1:])[0]


def execute(request: dict[str, Any]) -> int:
    """Run a job's call in this process; its exit status (0, or 1 with the traceback logged)."""
    if request.get("log"):
        from smnas.logs import setup_logging

        setup_logging(request["log"])
    try:
        module, _, name = request["target"].partition(":")
        function = getattr(importlib.import_module(module), name)
        function(*request["args"], **request["kwargs"])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        logging.getLogger("smnas").error("interrupted")
        return 130
    except BaseException:
        logging.getLogger("smnas").error("job %s failed:\n%s", request["target"], traceback.format_exc().rstrip())
        return 1
    finally:
        _log_usage()
    return 0


def _log_usage() -> None:
    """CPU time and peak memory of this process, to the job's log. (With a fork server, Snakemake's
    ``benchmark:`` files measure the job's waiting process, not this child.)"""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    logging.getLogger("smnas").info("job resources: %.1f s CPU, peak RSS %.0f MB",
                                    own.ru_utime + own.ru_stime, own.ru_maxrss / 1024)


# ---- finding or starting the server --------------------------------------------------------

def server_dir() -> Path:
    return Path(os.environ.get(DIR_ENV) or Path(tempfile.gettempdir()) / f"smnas-{os.getuid()}")


def fingerprint() -> str:
    """Key of the server this process may use: interpreter, sources, packages, import-time environment."""
    h = hashlib.sha256()
    h.update(f"{sys.executable}\0{sys.version}\0{sys.prefix}\0".encode())
    root = Path(__file__).resolve().parents[1]  # the smnas package
    for f in sorted(root.rglob("*.py")):
        st = f.stat()
        h.update(f"{f.relative_to(root)}\0{st.st_mtime_ns}\0{st.st_size}\0".encode())
    for name in sorted({p.partition(".")[0] for p in PRELOAD} - {"smnas"}):
        spec = importlib.util.find_spec(name)
        origin = Path(spec.origin) if spec and spec.origin else None
        h.update(f"{name}\0{origin}\0{origin.stat().st_mtime_ns if origin else ''}\0".encode())
    for key in sorted(os.environ):
        if IMPORT_ENV.match(key) and not THREAD_ENV.search(key):
            h.update(f"{key}={os.environ[key]}\0".encode())
    return h.hexdigest()[:16]


def socket_path() -> Path:
    return server_dir() / f"forkserver-{fingerprint()}.sock"


def connect(start: bool = True) -> socket.socket:
    """A connection to this process's fork server; if none runs, one is started and waited for
    (``start``) or :class:`Unavailable` is raised."""
    path = socket_path()
    if len(str(path)) > MAX_SOCKET_PATH:
        raise Unavailable(f"socket path {path} is longer than {MAX_SOCKET_PATH} characters; set {DIR_ENV}")
    with contextlib.suppress(FileNotFoundError, ConnectionRefusedError):
        return _connect(path)
    if not start:
        raise Unavailable(f"no server at {path}")
    try:
        done = subprocess.run(_serve_command(path), cwd="/", stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=START_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"the server did not start within {START_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        raise Unavailable((done.stderr or done.stdout).strip()[-3000:])
    try:
        return _connect(path)
    except OSError as e:
        raise Unavailable(f"the server started but {path} refuses connections: {e}") from None


def prestart() -> None:
    """Start this environment's server in the background, if jobs here would use one (the
    workflow's ``onstart``: the server imports while the first jobs prepare the data)."""
    if not enabled() or len(str(socket_path())) > MAX_SOCKET_PATH:
        return
    subprocess.Popen(_serve_command(socket_path()), cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)


def _serve_command(path: Path) -> list[str]:
    idle = os.environ.get(IDLE_ENV, str(DEFAULT_IDLE))
    return [sys.executable, "-m", "smnas.forkserver", "serve", "--socket", str(path), "--idle", idle]


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except BaseException:
        sock.close()
        raise
    return sock
