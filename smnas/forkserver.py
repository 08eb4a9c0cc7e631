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

import argparse
import contextlib
import fcntl
import hashlib
import importlib
import importlib.util
import logging
import os
import pickle
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
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
           "pycocotools.cocoeval", "smnas.workflow", "smnas.engine.candidate", "smnas.search.evolution",
           "smnas.search.stage2", "smnas.report", "smnas.data.synthetic")
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
        from smnas.workflow import setup_logging

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
    return 0


# ---- finding or starting the server --------------------------------------------------------

def server_dir() -> Path:
    return Path(os.environ.get(DIR_ENV) or Path(tempfile.gettempdir()) / f"smnas-{os.getuid()}")


def fingerprint() -> str:
    """Key of the server this process may use: interpreter, sources, packages, import-time environment."""
    h = hashlib.sha256()
    h.update(f"{sys.executable}\0{sys.version}\0{sys.prefix}\0".encode())
    root = Path(__file__).resolve().parent
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


# ---- the server ----------------------------------------------------------------------------

def start(path: Path, idle: float) -> int:
    """Launch a detached server on ``path`` unless one answers there; return once it listens (0)
    or has failed (1). Launches are serialised by a lock file, so concurrent jobs start one server."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = open(path.with_suffix(".lock"), "a")
    fcntl.flock(lock, fcntl.LOCK_EX)  # held until this launcher exits
    try:
        _connect(path).close()
        return 0
    except (FileNotFoundError, ConnectionRefusedError):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale socket from a killed server
    ready_r, ready_w = os.pipe()
    if os.fork():  # the launcher: wait for "ready", or for the pipe to close on a failure
        os.close(ready_w)
        with os.fdopen(ready_r, "rb") as ready:
            if ready.read() == b"ready":
                return 0
        print(f"the fork server failed to start (its log, {path.with_suffix('.log')}):\n"
              f"{_tail(path.with_suffix('.log'))}", file=sys.stderr)
        return 1
    lock.close()  # the launcher's copy keeps the lock
    os.close(ready_r)
    os.setsid()
    code = 1
    try:
        _redirect_stdio(path.with_suffix(".log"))
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(message)s", force=True)
        code = Server(path, idle, ready_w).serve()
    except BaseException:
        log.error("fork server failed:\n%s", traceback.format_exc())
    finally:
        logging.shutdown()
        os._exit(code)


def _redirect_stdio(log_file: Path) -> None:
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)
    os.close(out)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Server:
    """Accepts jobs on a Unix socket and forks a child for each; single-threaded (a selector)."""

    def __init__(self, path: Path, idle: float, ready_fd: int | None = None):
        self.path, self.idle, self.ready_fd = path, idle, ready_fd
        self.children: dict[int, socket.socket | None] = {}  # child pid -> its job's connection
        self.selector = selectors.DefaultSelector()
        self.listener: socket.socket | None = None
        self.stopping = self.sigterm = False
        self.wake: tuple[int, int] = (-1, -1)

    def _on_sigterm(self, _signum: int, _frame: Any) -> None:
        self.sigterm = True

    def serve(self) -> int:
        t0 = time.perf_counter()
        for name in PRELOAD:
            importlib.import_module(name)
        log.info("preloaded %d modules in %.1f s", len(PRELOAD), time.perf_counter() - t0)
        self._listen()
        self.wake = os.pipe()
        for fd in self.wake:
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self.wake[1])
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the selector through the pipe
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self.selector.register(self.wake[0], selectors.EVENT_READ, "wake")
        if self.ready_fd is not None:
            os.write(self.ready_fd, b"ready")
            os.close(self.ready_fd)
            self.ready_fd = None
        last = time.monotonic()
        while self.children or not self.stopping:
            timeout = None if self.children else max(0.0, last + self.idle - time.monotonic())
            if timeout == 0.0 and not self.children:
                self._stop(f"idle for {self.idle:.0f} s")
                break
            events = self.selector.select(timeout)
            for key, _ in events:
                if key.data == "listen":
                    self._accept()
                elif key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake[0], 4096)
                else:
                    self._client_gone(key.data)
            self._reap()
            if self.sigterm:
                self._stop("SIGTERM")
            if events or self.children:
                last = time.monotonic()
        log.info("exiting")
        return 0

    def _listen(self) -> None:
        tmp = self.path.with_name(f"t{os.getpid()}.sock")  # as short as the final name
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(tmp))
        os.chmod(tmp, 0o600)
        listener.listen(64)
        os.rename(tmp, self.path)  # appears only once it accepts
        self.inode = self.path.stat().st_ino
        self.listener = listener
        self.selector.register(listener, selectors.EVENT_READ, "listen")
        log.info("listening on %s (idle timeout %.0f s)", self.path, self.idle)

    def _stop(self, why: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping: %s", why)
        with contextlib.suppress(OSError):
            if self.path.stat().st_ino == self.inode:  # not a newer server's socket
                self.path.unlink()
        if self.listener is not None:
            self.selector.unregister(self.listener)
            self.listener.close()
            self.listener = None

    def _accept(self) -> None:
        assert self.listener is not None
        conn, _ = self.listener.accept()
        fds: list[int] = []
        try:
            conn.settimeout(30)
            header, fds, _, _ = socket.recv_fds(conn, 8, 3)
            if len(header) != 8:
                raise RuntimeError(f"bad header {header!r}")
            size = struct.unpack("!Q", header)[0]
            payload = bytearray()
            while len(payload) < size:
                chunk = conn.recv(min(1 << 20, size - len(payload)))
                if not chunk:
                    raise RuntimeError("connection closed during the request")
                payload += chunk
            request = pickle.loads(payload)
            if request.get("op") == "stop":
                self._stop("asked to")
                conn.sendall(b"X" + struct.pack("!i", 0))
                conn.close()
                return
            if len(fds) != 3:
                raise RuntimeError(f"expected 3 file descriptors, got {len(fds)}")
        except Exception:
            log.error("bad request:\n%s", traceback.format_exc())
            for fd in fds:
                os.close(fd)
            conn.close()
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._child(request, fds, conn)  # never returns
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # also done by the child: whichever runs first
        for fd in fds:
            os.close(fd)
        conn.settimeout(None)
        try:
            conn.sendall(b"P" + struct.pack("!i", pid))
        except OSError:  # the job is gone already
            self._kill(pid)
        self.children[pid] = conn
        self.selector.register(conn, selectors.EVENT_READ, pid)
        log.info("job %d: %s (%s)", pid, request["target"], request.get("log") or "no log")

    def _child(self, request: dict[str, Any], fds: list[int], conn: socket.socket) -> None:
        code = 1
        try:
            os.setpgid(0, 0)
            signal.set_wakeup_fd(-1)
            for s in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
                signal.signal(s, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.selector.close()
            for fd in self.wake:
                os.close(fd)
            for c in [conn, *self.children.values()]:
                if c is not None:
                    c.close()
            if self.listener is not None:
                self.listener.close()
            for i, fd in enumerate(fds):
                os.dup2(fd, i)
                os.close(fd)
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            sys.path[:] = request["path"]
            sys.argv = [request["target"]]
            code = execute(request)
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def _client_gone(self, pid: int) -> None:
        """The job's process closed its connection (it died): kill what it was running."""
        conn = self.children.get(pid)
        if conn is None:
            return
        with contextlib.suppress(OSError):
            if conn.recv(1):
                return  # not a close: jobs send nothing after the request
        log.info("job %d: its process went away; killing it", pid)
        self._kill(pid)
        self.selector.unregister(conn)
        conn.close()
        self.children[pid] = None  # reaped in _reap

    @staticmethod
    def _kill(pid: int) -> None:
        for kill in (os.killpg, os.kill):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(pid, signal.SIGKILL)
                return

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code  # killed by a signal: the shell's 128 + N
            conn = self.children.pop(pid, None)
            log.info("job %d: exit status %d", pid, code)
            if conn is not None:
                with contextlib.suppress(OSError):
                    self.selector.unregister(conn)
                    conn.sendall(b"X" + struct.pack("!i", code))
                conn.close()


# ---- command line --------------------------------------------------------------------------

def stop_all(directory: str | Path | None = None) -> int:
    """Ask every fork server in ``directory`` (default :func:`server_dir`) to stop; the number asked."""
    n = 0
    for path in Path(directory or server_dir()).glob("forkserver-*.sock"):
        try:
            sock = _connect(path)
        except OSError:
            continue
        with sock:
            payload = pickle.dumps({"op": "stop"})
            socket.send_fds(sock, [struct.pack("!Q", len(payload))], [])
            sock.sendall(payload)
            _receive(sock, b"X")
        n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smnas.forkserver", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Jobs start a server by themselves; these commands are for inspection.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start a detached server on SOCKET and return once it listens")
    serve.add_argument("--socket", type=Path, default=None, help="socket path (default: this environment's)")
    serve.add_argument("--idle", type=float, default=DEFAULT_IDLE, help="exit after this many idle seconds")
    sub.add_parser("stop", help="ask this user's servers to stop (running jobs finish first)")
    sub.add_parser("status", help="print whether jobs here would use a server, and its socket")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return start(args.socket or socket_path(), args.idle)
    if args.command == "stop":
        print(f"asked {stop_all()} server(s) in {server_dir()} to stop")
        return 0
    path = socket_path()
    running = path.exists()
    print(f"enabled: {enabled()}\nsocket: {path}\nrunning: {running}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
