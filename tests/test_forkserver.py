"""The fork server: jobs run in children of one warm process, with the job's stdio, cwd and env;
failures and kills behave as for a job in its own process."""
import json
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from smnas import forkserver
from smnas.forkserver.server import stop_all

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def server_env():
    """Environment for job processes: a private server folder (one server for the module's tests)."""
    sdir = Path(tempfile.mkdtemp(prefix="smnas-fs-"))  # short: a socket path has at most 108 bytes
    env = dict(os.environ, SMNAS_FORKSERVER_DIR=str(sdir), SMNAS_FORKSERVER_IDLE="60", SMNAS_FORKSERVER="1")
    env.pop("SLURM_JOB_ID", None)
    yield env
    stop_all(sdir)
    shutil.rmtree(sdir, ignore_errors=True)


def job(env, cwd, target, *args, wait=True):
    """A job process, as Snakemake would start one: python running a script that calls run_job."""
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
            "from smnas.forkserver import run_job\n"
            f"run_job({target!r}, {args!r}, log_file='job.log')\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out, err


def wait_for(path: Path, timeout: float = 240) -> str:
    t0 = time.monotonic()
    while not path.exists():
        assert time.monotonic() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_jobs_run_in_children_of_one_server_with_their_stdio_cwd_env_and_log(tmp_path, server_env):
    env = dict(server_env, SMNAS_TEST_VALUE="first")
    code, out, err = job(env, tmp_path, "forkserver_targets:report", str(tmp_path / "a.json"), "hello")
    assert code == 0, err
    assert out == "hello\n"
    first = json.loads((tmp_path / "a.json").read_text())
    assert first["cwd"] == str(tmp_path) and first["env"] == "first"
    assert first["torch_preloaded"], err
    assert "reported to" in (tmp_path / "job.log").read_text()

    other = tmp_path / "other"
    other.mkdir()
    code, out, err = job(dict(server_env, SMNAS_TEST_VALUE="second"), other, "forkserver_targets:report",
                         str(tmp_path / "b.json"), "again")
    assert code == 0, err
    second = json.loads((tmp_path / "b.json").read_text())
    assert second["ppid"] == first["ppid"], "the second job should be forked by the same server"
    assert second["pid"] != first["pid"]
    assert second["cwd"] == str(other) and second["env"] == "second"


def test_a_failing_job_exits_nonzero_with_its_traceback(tmp_path, server_env):
    code, _, err = job(server_env, tmp_path, "forkserver_targets:fail", "no good")
    assert code == 1
    assert "ValueError: no good" in err
    assert "ValueError: no good" in (tmp_path / "job.log").read_text()
    code, _, _ = job(server_env, tmp_path, "forkserver_targets:exit_with", 3)
    assert code == 3


def test_killing_the_job_process_kills_its_child(tmp_path, server_env):
    proc = job(server_env, tmp_path, "forkserver_targets:wait", str(tmp_path / "pid"), wait=False)
    child = int(wait_for(tmp_path / "pid"))
    assert child != proc.pid and alive(child)
    proc.kill()  # SIGKILL: nothing is forwarded; the server sees the connection close
    proc.wait()
    t0 = time.monotonic()
    while alive(child):
        assert time.monotonic() - t0 < 10, "the job's child outlived its killed job process"
        time.sleep(0.05)


def test_sigterm_is_forwarded_and_the_status_returned(tmp_path, server_env):
    proc = job(server_env, tmp_path, "forkserver_targets:wait", str(tmp_path / "pid"), wait=False)
    child = int(wait_for(tmp_path / "pid"))
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert not alive(child)


def test_off_runs_the_job_in_its_own_process(tmp_path, server_env):
    env = dict(server_env, SMNAS_FORKSERVER="0", SMNAS_FORKSERVER_DIR=str(tmp_path / "s"))
    code, out, err = job(env, tmp_path, "forkserver_targets:report",
                         str(tmp_path / "a.json"), "here")
    assert code == 0, err
    info = json.loads((tmp_path / "a.json").read_text())
    assert not info["torch_preloaded"]
    assert not (tmp_path / "s").exists(), "no server should have been started"


def test_a_socket_path_too_long_falls_back_to_the_job_process(tmp_path, server_env):
    env = dict(server_env, SMNAS_FORKSERVER_DIR=str(tmp_path / ("x" * 120)))
    code, out, err = job(env, tmp_path, "forkserver_targets:report", str(tmp_path / "a.json"), "here")
    assert code == 0, err
    assert "longer than" in err and "SMNAS_FORKSERVER_DIR" in err
    assert not json.loads((tmp_path / "a.json").read_text())["torch_preloaded"]


def test_enabled_auto_is_off_inside_a_slurm_job(monkeypatch):
    monkeypatch.delenv("SMNAS_FORKSERVER", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert forkserver.enabled()
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert not forkserver.enabled()
    monkeypatch.setenv("SMNAS_FORKSERVER", "on")
    assert forkserver.enabled()
    monkeypatch.setenv("SMNAS_FORKSERVER", "0")
    assert not forkserver.enabled()
    monkeypatch.setenv("SMNAS_FORKSERVER", "maybe")
    with pytest.raises(ValueError, match="SMNAS_FORKSERVER"):
        forkserver.enabled()


def test_the_server_key_follows_import_time_environment_but_not_thread_counts(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    base = forkserver.fingerprint()
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert forkserver.fingerprint() == base
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert forkserver.fingerprint() != base


def test_an_idle_server_exits_and_removes_its_socket(tmp_path, server_env):
    sdir = tmp_path / "s"  # a server of its own
    env = dict(server_env, SMNAS_FORKSERVER_IDLE="1", SMNAS_FORKSERVER_DIR=str(sdir))
    code, _, err = job(env, tmp_path, "forkserver_targets:report", str(tmp_path / "a.json"))
    assert code == 0, err
    server = json.loads((tmp_path / "a.json").read_text())["ppid"]
    t0 = time.monotonic()
    while alive(server):
        assert time.monotonic() - t0 < 20, "an idle server should exit"
        time.sleep(0.1)
    assert not list(sdir.glob("*.sock"))


def test_jobs_that_come_together_start_one_server(tmp_path, server_env):
    env = dict(server_env, SMNAS_FORKSERVER_DIR=str(tmp_path / "s"))
    procs = [job(env, tmp_path, "forkserver_targets:report", str(tmp_path / f"{i}.json"), wait=False) for i in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    servers = {json.loads((tmp_path / f"{i}.json").read_text())["ppid"] for i in range(3)}
    assert len(servers) == 1 and not servers & {p.pid for p in procs}
    assert len(list((tmp_path / "s").glob("*.sock"))) == 1
    stop_all(tmp_path / "s")


def test_status_and_stop_commands(tmp_path, server_env):
    env = dict(server_env, SMNAS_FORKSERVER_DIR=str(tmp_path / "s"))
    assert job(env, tmp_path, "forkserver_targets:report", str(tmp_path / "a.json"))[0] == 0
    status = subprocess.run([sys.executable, "-m", "smnas.forkserver", "status"], env=env, capture_output=True,
                            text=True, check=True).stdout
    assert "enabled: True" in status and "running: True" in status
    stop = subprocess.run([sys.executable, "-m", "smnas.forkserver", "stop"], env=env, capture_output=True,
                          text=True, check=True).stdout
    assert "asked 1 server(s)" in stop
    server = json.loads((tmp_path / "a.json").read_text())["ppid"]
    t0 = time.monotonic()
    while alive(server):
        assert time.monotonic() - t0 < 20, "a stopped server should exit"
        time.sleep(0.1)
