"""The cluster path through a real SLURM controller: a one-node cluster on this machine
(slurmctld + slurmd + a private munged), `snakemake --profile slurm` submitting the candidate jobs
with the SLURM executor plugin. Needs Debian's slurmctld, slurmd, slurm-client and munge
(.ci/run installs them); without them the test is skipped and says so.

The cluster brings its own munged (key and socket in a temporary directory, so a stale
/run/munge socket or a missing /etc/munge key does not matter) and keeps its state there too.
Its slurm.conf has to be /etc/slurm/slurm.conf: SLURM_CONF would do for the daemons and for
sbatch, but snakemake-executor-plugin-slurm-jobstep strips every SLURM_* variable before the
`srun` it runs inside each job. The file carries a marker, is removed afterwards, and a
slurm.conf without the marker (a real cluster's) makes the test skip instead."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# smnas test cluster"
BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "munged", "mungekey")

pytestmark = pytest.mark.slow


def _conf(state: Path) -> str:
    return f"""{MARKER}: written by tests/test_slurm.py, safe to delete
ClusterName=smnas-test
SlurmctldHost=localhost
AuthType=auth/munge
AuthInfo=socket={state}/munge.socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=3600
SlurmUser=root
SlurmdUser=root
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmdSpoolDir={state}/slurmd
StateSaveLocation={state}/ctld
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=localhost CPUs={os.cpu_count()} RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _tails(state: Path) -> str:
    out = []
    for name in ("munged.log", "slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out"):
        f = state / name
        if f.exists():
            out.append(f"--- {name} ---\n" + f.read_text(errors="replace")[-1500:])
    return "\n".join(out)


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        pytest.skip(f"SLURM not installed (missing {', '.join(missing)}): apt-get install slurmctld slurmd slurm-client munge")
    if CONF.exists() and MARKER not in CONF.read_text():
        pytest.skip(f"{CONF} belongs to a real cluster; not replacing it")
    state = tmp_path_factory.mktemp("slurm")
    state.chmod(0o700)
    for sub in ("slurmd", "ctld"):
        (state / sub).mkdir()
    subprocess.run(["mungekey", "--create", f"--keyfile={state}/munge.key"], check=True, capture_output=True)
    subprocess.run(["munged", "--force", f"--socket={state}/munge.socket", f"--key-file={state}/munge.key",
                    f"--log-file={state}/munged.log", f"--pid-file={state}/munged.pid",
                    f"--seed-file={state}/munged.seed"], check=True, capture_output=True)
    CONF.parent.mkdir(parents=True, exist_ok=True)
    CONF.write_text(_conf(state))
    procs = [subprocess.Popen([daemon, "-D"], stdout=open(state / f"{daemon}.out", "w"), stderr=subprocess.STDOUT)
             for daemon in ("slurmctld", "slurmd")]
    try:
        deadline = time.time() + 120
        while True:
            try:
                states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20).stdout
            except subprocess.TimeoutExpired:
                states = ""
            if "idle" in states:
                break
            dead = [p.args[0] for p in procs if p.poll() is not None]
            assert not dead and time.time() < deadline, f"cluster did not come up (exited: {dead})\n{_tails(state)}"
            time.sleep(1)
        yield state
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        pid = state / "munged.pid"
        if pid.exists():
            try:
                os.kill(int(pid.read_text().strip()), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
        # With a slurm.conf but no controller, every `scontrol` (which the SLURM executor plugin
        # runs whenever Snakemake starts) waits 9 s for a timeout: leave no config behind.
        CONF.unlink(missing_ok=True)


def test_search_generation_runs_through_slurm(slurm_cluster, tmp_path):
    cmd = [sys.executable, "-m", "snakemake", "results/stage1/gen0/population.parquet", "--profile", "slurm",
           "--default-resources", "slurm_partition=debug", "mem_mb=1000", "runtime=30", "cpus_per_task=1",
           "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
           "--seconds-between-status-checks", "3", "--latency-wait", "5", "--slurm-keep-successful-logs",
           "--directory", str(tmp_path), "--configfile", str(REPO / "tests/config_tiny.yaml"), str(REPO / "tests/config_slurm.yaml")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:] + _tails(slurm_cluster)
    pop = pd.read_parquet(tmp_path / "results/stage1/gen0/population.parquet")
    assert len(pop) == 2 and (pop["status"] == "ok").all()
    # every heavy job went through the controller: one SLURM log per submitted job ...
    for rule in ("train", "time", "evaluate"):
        assert len(list((tmp_path / ".snakemake/slurm_logs").glob(f"rule_{rule}/*/*.log"))) == 2, rule
    # ... and the controller knows them (finished jobs stay listed for MinJobAge)
    jobs = subprocess.run(["squeue", "-h", "--states=all", "-o", "%j %T"], capture_output=True, text=True).stdout
    assert jobs.count("COMPLETED") >= 6, jobs
    # bookkeeping stayed local: no SLURM job for sample or rank
    assert not list((tmp_path / ".snakemake/slurm_logs").glob("rule_sample*"))


def _slurm_cmd(target: str, workdir: Path, *configs: Path) -> list[str]:
    return [sys.executable, "-m", "snakemake", target, "--profile", "slurm",
            "--default-resources", "slurm_partition=debug", "mem_mb=1000", "runtime=30", "cpus_per_task=1",
            "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
            "--seconds-between-status-checks", "3", "--latency-wait", "5", "--slurm-keep-successful-logs",
            "--directory", str(workdir), "--configfile", *map(str, configs)]


def test_a_cancelled_training_job_is_retried_and_resumes(slurm_cluster, tmp_path):
    """A training job cancelled mid-generation (`scancel`, as a preempted or failed node) is
    retried (the profile's `retries`), resumes from its last epoch, and the generation's table
    equals an uncancelled run's (here: the same generation run locally)."""
    longer = tmp_path / "longer.yaml"  # epochs long enough to cancel a job between two of them
    longer.write_text("stage1:\n  train: {epochs: 12, batch_size: 4, lr: 0.01, warmup_iters: 2}\n  init: scratch\n")
    configs = (REPO / "tests/config_tiny.yaml", REPO / "tests/config_slurm.yaml", longer)
    target = "results/stage1/gen0/population.parquet"
    cluster_dir, local_dir = tmp_path / "cluster", tmp_path / "local"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_slurm_cmd(target, cluster_dir, *configs), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    deadline, cancelled = time.time() + 300, None
    while cancelled is None:
        assert proc.poll() is None and time.time() < deadline, "no training reached its first checkpoint"
        for ckpt in cluster_dir.glob("results/stage1/candidates/*/train/last.pt"):
            hash_ = ckpt.parents[1].name
            jobs = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i %k"], capture_output=True, text=True).stdout
            ids = [line.split()[0] for line in jobs.splitlines() if "rule_train" in line and hash_ in line]
            if ids:
                subprocess.run(["scancel", ids[0]], check=True)
                cancelled = hash_
                break
        time.sleep(0.2)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-6000:] + _tails(slurm_cluster)
    log = (cluster_dir / f"results/logs/stage1/candidates/{cancelled}/train.log").read_text()
    assert "resuming" in log, log[-2000:]  # the retry started from the cancelled job's checkpoint
    local = subprocess.run([sys.executable, "-m", "snakemake", target, "--cores", "2", "--directory", str(local_dir),
                            "--configfile", *map(str, configs)], cwd=REPO, capture_output=True, text=True, env=env)
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
    columns = ["arch", "status", "map", "map50", "gmacs", "epochs"]
    got = pd.read_parquet(cluster_dir / target)[columns].sort_values("arch").reset_index(drop=True)
    want = pd.read_parquet(local_dir / target)[columns].sort_values("arch").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want)
