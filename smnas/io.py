"""Atomic file writes: write to a temporary name in the same folder, then rename.

A crash (or SIGKILL) mid-write leaves the old file, or none, never half of a new one.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Iterator


# Two threads reading the umask by the round trip at once: the second would read the first's 0o077.
_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process's file mode creation mask, read now (it may change while a process runs).

    Returns:
        The umask, e.g. ``0o022``.
    """
    # Linux reports it in /proc without changing it. The fallback has to set it to read it; it
    # sets 0o077 meanwhile, so a file another thread creates in that instant is only too private.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    For writers that want a file name (``torch.save``, ``DataFrame.to_parquet``, ``Image.save``).
    On an exception the temporary file is removed and ``path`` is left untouched. The file
    gets the mode ``open()`` would give a new file, ``0o666`` less the umask at the time of the
    rename, not mkstemp's 0600: results folders are shared, and a umask is how users say so.

    Args:
        path: the file to write; its folder is created if missing.

    Returns:
        A context manager yielding the temporary path to write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # After the writer: some writers replace the file at tmp_path rather than write into it.
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Like ``open(path, mode)`` for writing, but the file appears only when the block succeeds.

    Args:
        path: the file to write (see :func:`atomic_path` for its mode).
        mode: an ``open()`` mode that writes: ``"w"``, ``"wb"``, ...

    Returns:
        A context manager yielding the open temporary file.
    """
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open writes only; got mode {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            yield f


def read_json(path: str | os.PathLike, expected: str) -> Any:
    """Load a JSON file; a missing or malformed file is a DataFormatError naming it and what was
    ``expected`` (e.g. "a COCO instances JSON")."""
    from smnas.errors import DataFormatError

    path = Path(path)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found (expected {expected})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: not valid JSON ({e})") from None


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    text = json.dumps(obj, indent=indent)  # dumps uses the C encoder; dump streams in pure Python
    with atomic_open(path, "w") as f:
        f.write(text + "\n")
