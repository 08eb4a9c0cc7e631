"""A machine-wide lock that keeps a latency measurement alone on its device.

Training steps, inference batches and COCO evaluation hold the lock *shared*; a latency
measurement holds it *exclusive*. So while a model is timed, no other smnas job on this machine
computes on the device (they pause between two steps), and the rest of the time jobs run side by
side. This is what lets a local run time candidates without reserving every core for the whole
timing job (start-up and model loading included): only the measured window is exclusive.

A waiting measurement gets priority through a gate (a "turnstile"): a step passes the gate before
it takes the device, and the measurement holds the gate while it waits, so steps that keep coming
cannot starve it. Both are ``flock`` locks on two small files in a local directory
(``$SMNAS_LOCK_DIR``, else the temporary directory), named by user and device, so the lock is per
machine (per node on a cluster, where timing jobs also get a whole node from the SLURM profile).

Usage::

    lock = DeviceLock("cpu")
    for batch in loader:
        with lock.shared():
            step(batch)
    with lock.exclusive():
        latency = measure(model)

Only this package's jobs take the lock: another program on the machine (or another job's Python
start-up) can still run during a measurement.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Iterable, Iterator, TypeVar

T = TypeVar("T")

LOCK_DIR_ENV = "SMNAS_LOCK_DIR"


def lock_path(device: str, directory: str | Path | None = None) -> Path:
    """The lock file of ``device`` ("cpu", "cuda", "cuda:1"): per user, and per visible GPU set."""
    directory = Path(directory or os.environ.get(LOCK_DIR_ENV) or tempfile.gettempdir())
    name = "cuda:0" if str(device) == "cuda" else str(device)
    if name.startswith("cuda"):  # cuda:0 is a different GPU under another CUDA_VISIBLE_DEVICES
        name += "-" + os.environ.get("CUDA_VISIBLE_DEVICES", "all")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    return directory / f"smnas-{os.getuid()}-{name}.lock"


class DeviceLock:
    """Shared for work on ``device``, exclusive for timing on it. Re-entrant in neither mode."""

    def __init__(self, device: str, directory: str | Path | None = None):
        self.path = lock_path(device, directory)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._device: IO[bytes] | None = None
        self._gate: IO[bytes] | None = None

    def _files(self) -> tuple[IO[bytes], IO[bytes]]:
        if self._device is None or self._gate is None:
            # "a" creates the files if needed and never truncates what another process holds
            self._device = open(self.path, "ab")
            self._gate = open(self.path.with_name(self.path.name + ".gate"), "ab")
        return self._device, self._gate

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """Hold the device for one step of work (waits while a measurement waits or runs)."""
        device, gate = self._files()
        fcntl.flock(gate, fcntl.LOCK_SH)
        try:
            fcntl.flock(device, fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(device, fcntl.LOCK_UN)

    def steps(self, iterable: Iterable[T]) -> Iterator[T]:
        """Items of ``iterable``, the lock held shared from fetching one until asking for the next.

        ``for batch in lock.steps(loader): step(batch)`` makes loading and computing one batch a
        step; leaving the loop early (break, return, an exception) releases the lock.
        """
        it = iter(iterable)
        while True:
            with self.shared():
                try:
                    item = next(it)
                except StopIteration:
                    return
                yield item

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Have the device alone: waits for the steps under way to end, holds back new ones."""
        device, gate = self._files()
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(device, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(device, fcntl.LOCK_UN)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)

    def close(self) -> None:
        for f in (self._device, self._gate):
            if f is not None:
                f.close()
        self._device = self._gate = None

    def __del__(self) -> None:
        self.close()
