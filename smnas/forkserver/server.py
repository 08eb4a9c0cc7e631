"""The fork server itself: started detached by a job (``python -m smnas.forkserver serve``), it
imports :data:`~smnas.forkserver.PRELOAD` once, then forks one child per job. See the package's
docstring for the protocol and its guarantees."""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib
import logging
import os
import pickle
import selectors
import signal
import socket
import struct
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from smnas.forkserver import (DEFAULT_IDLE, PRELOAD, _connect, _receive, enabled, execute, server_dir,
                              socket_path)

log = logging.getLogger(__name__)


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
        # bind() creates the socket file with 0o777 less the umask; a chmod afterwards would leave
        # a window in which another user could connect. Under umask 177 it is born 0600 (077
        # would give 0700: private too, but an execute bit means nothing on a socket). The server
        # has no other thread creating files, so changing the process-wide umask is safe here.
        previous = os.umask(0o177)
        try:
            listener.bind(str(tmp))
        finally:
            os.umask(previous)
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
