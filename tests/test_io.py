"""Atomic writes: the file gets the umask's mode, and a failure or a kill mid-write leaves the old file."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from smnas.io import atomic_open, atomic_path, atomic_write_json, current_umask


@pytest.fixture
def umask():
    """Set the process umask for a test; the previous one comes back afterwards."""
    previous = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_current_umask_reads_without_changing_it(umask):
    umask(0o027)
    assert current_umask() == 0o027
    assert current_umask() == 0o027  # reading it did not leave another value behind
    umask(0o002)
    assert current_umask() == 0o002


def test_written_files_honour_the_umask_at_write_time(umask, tmp_path):
    # One process, two umasks in turn: a mode cached at the first write would fail the second.
    for mask, expected in ((0o022, 0o644), (0o027, 0o640)):
        umask(mask)
        with atomic_open(tmp_path / f"text{mask:o}.txt") as f:
            f.write("x")
        with atomic_path(tmp_path / f"path{mask:o}.bin") as tmp:
            tmp.write_bytes(b"x")
        atomic_write_json(tmp_path / f"obj{mask:o}.json", {"a": 1})
        for name in (f"text{mask:o}.txt", f"path{mask:o}.bin", f"obj{mask:o}.json"):
            assert _mode(tmp_path / name) == expected, (name, oct(_mode(tmp_path / name)))


def test_a_writer_that_recreates_the_file_still_gets_the_umask_mode(umask, tmp_path):
    umask(0o027)
    target = tmp_path / "out.bin"
    with atomic_path(target) as tmp:
        tmp.unlink()  # as a writer that removes and recreates its output does
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
    assert _mode(target) == 0o640


def test_failure_inside_the_block_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "front.json"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_open(target) as f:
            f.write("new, half written")
            f.flush()
            raise RuntimeError("writer failed")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["front.json"]


def test_atomic_open_refuses_modes_that_do_not_write(tmp_path):
    with pytest.raises(ValueError, match="atomic_open writes only; got mode 'a'"):
        with atomic_open(tmp_path / "x", "a"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_sigkill_mid_write_leaves_the_previous_file(tmp_path):
    target = tmp_path / "table.json"
    old = json.dumps({"rows": [1, 2, 3]}) + "\n"
    target.write_text(old)
    half = 4 << 20  # 4 MiB written of a file that would be 8 MiB
    # The child writes half, flushes it to the temporary file, says so on stdout, then waits to
    # be killed: the kill lands while the atomic_open block is open, never after it.
    child = textwrap.dedent(f"""
        import sys, time
        from smnas.io import atomic_open
        with atomic_open({str(target)!r}, "wb") as f:
            f.write(b"n" * {half})
            f.flush()
            print("half", flush=True)
            time.sleep(120)
            f.write(b"n" * {half})
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "half\n"
        temporaries = [p for p in tmp_path.iterdir() if p != target]
        # the write really was under way: half of the new content sits in the temporary file
        assert [(p.name.startswith(".table.json."), p.stat().st_size) for p in temporaries] == [(True, half)]
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert target.read_text() == old
