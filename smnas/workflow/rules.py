"""Which function runs each workflow rule, and how a rule's job calls it.

Every rule in ``rules/*.smk`` that runs code has ``script: "../scripts/run.py"``, which calls
:func:`run_rule`: the rule's *named* inputs, outputs and params become the keyword arguments of
its function in :data:`JOBS` (unnamed inputs are only dependencies). So a rule and its function
meet by name, not by position, and ``tests/test_jobs.py`` checks every rule against its function
without running anything. Heavy jobs run in a child of the fork server (:mod:`smnas.forkserver`).

This module is imported by each job's own process: it must stay light (no torch, no pandas).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JOBS_MODULE = "smnas.workflow.jobs"


@dataclass(frozen=True)
class Job:
    """How a rule runs.

    Attributes:
        function: the function's name in :mod:`smnas.workflow.jobs`.
        start_server: start a fork server if none runs (jobs that import torch). Bookkeeping
            jobs use one only if it is already running, so a cluster's login node starts none.
        threads: pass the rule's ``threads`` as the keyword ``threads``.
    """

    function: str
    start_server: bool = False
    threads: bool = False

    @property
    def target(self) -> str:
        return f"{JOBS_MODULE}:{self.function}"


JOBS: dict[str, Job] = {
    "make_dataset": Job("make_dataset"),
    "make_classification": Job("make_classification"),
    "pretrain": Job("pretrain", start_server=True, threads=True),
    "convert_voc": Job("convert_voc"),
    "convert_bdd": Job("convert_bdd"),
    "groups": Job("groups"),
    "sample": Job("sample"),
    "train": Job("train", start_server=True, threads=True),
    "time": Job("time", start_server=True),
    "evaluate": Job("evaluate", start_server=True),
    "rank": Job("rank"),
    "retime": Job("retime", start_server=True),
    "front": Job("front"),
    "stage2_front": Job("union_front"),
    "inherit": Job("inherit", start_server=True),
    "spnas_front": Job("union_front"),
    "final_arch": Job("final_arch"),
    "baseline_arch": Job("baseline_arch"),
    "agreement_arch": Job("agreement_arch"),
    "final_train": Job("train", start_server=True, threads=True),
    "final_time": Job("time", start_server=True),
    "final_evaluate": Job("evaluate", start_server=True),
    "transfer_train": Job("train", start_server=True, threads=True),
    "transfer_evaluate": Job("evaluate", start_server=True),
    "report_plots": Job("report_plots"),
}


def _plain(value: Any) -> Any:
    """Snakemake's file lists and strings as plain lists and str (they travel to the fork server)."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, list):  # Namedlist: a list-valued input or output
        return [_plain(v) for v in value]
    return value


def rule_kwargs(rule: str, named: list[tuple[str, Any]], threads: int | None = None) -> dict[str, Any]:
    """The keyword arguments of ``rule``'s function from its named (name, value) pairs.

    Raises:
        KeyError: the rule is not in JOBS.
        ValueError: a name is declared twice (an input and an output of one name, say).
    """
    job = JOBS[rule]
    kwargs: dict[str, Any] = {}
    for name, value in named:
        if name in kwargs:
            raise ValueError(f"rule {rule}: {name!r} is declared twice among its inputs, outputs and params")
        kwargs[name] = _plain(value)
    if job.threads:
        kwargs["threads"] = threads
    return kwargs


def run_rule(snakemake: Any) -> None:
    """Run the job of the rule that ``snakemake`` (the script's object) describes."""
    from smnas.forkserver import run_job

    named = [*snakemake.input.items(), *snakemake.output.items(), *snakemake.params.items()]
    job = JOBS[snakemake.rule]
    run_job(job.target, (), rule_kwargs(snakemake.rule, named, snakemake.threads),
            log_file=snakemake.log[0], start=job.start_server)
