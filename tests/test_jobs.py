"""Every workflow rule meets its function by name: the job table against the real rule files."""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from smnas.workflow.rules import JOBS, Job, rule_kwargs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rules():
    """The rules of the workflow as Snakemake parses them (tiny config), without running anything."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

    with SnakemakeApi(OutputSettings()) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(), storage_settings=StorageSettings(),
            config_settings=ConfigSettings(configfiles=[ROOT / "tests/config_tiny.yaml"]),
            snakefile=ROOT / "Snakefile", workdir=ROOT,
        )._workflow
        return {r.name: r for r in workflow.rules}


def _names(rule) -> list[str]:
    return [*rule.input.keys(), *rule.output.keys(), *rule.params.keys()]


def _function(job: Job):
    module, _, name = job.target.partition(":")
    return getattr(importlib.import_module(module), name)


def test_every_scripted_rule_has_a_job_and_every_job_a_rule(rules):
    scripted = {name for name, r in rules.items() if r.script}
    assert scripted == set(JOBS)
    assert {Path(rules[name].script).name for name in scripted} == {"run.py"}


def test_each_rule_binds_its_function_by_name(rules):
    for name, job in JOBS.items():
        names = _names(rules[name])
        kwargs = rule_kwargs(name, [(n, None) for n in names], threads=1)
        try:
            inspect.signature(_function(job)).bind(**kwargs)
        except TypeError as e:
            pytest.fail(f"rule {name} ({names}) does not bind {job.target}: {e}")


def test_binding_fails_when_an_argument_is_renamed(rules, monkeypatch):
    """The check above can fail: a function whose argument no rule declares does not bind."""
    import smnas.workflow.jobs as jobs

    def train(architecture, train_json, val_json, model, status, data, options, threads=1):
        pass

    monkeypatch.setattr(jobs, "train", train)
    kwargs = rule_kwargs("train", [(n, None) for n in _names(rules["train"])], threads=1)
    with pytest.raises(TypeError, match="arch"):
        inspect.signature(_function(JOBS["train"])).bind(**kwargs)


def test_rule_kwargs_plain_values_and_duplicates():
    class Files(list):  # stands in for Snakemake's Namedlist
        pass

    class Path_(str):  # stands in for Snakemake's _IOFile
        pass

    out = rule_kwargs("rank", [("candidates", Path_("a.parquet")), ("metrics", Files([Path_("m.json")])),
                               ("previous", Files()), ("population", "p.parquet"), ("cost", "gmacs")])
    assert out == {"candidates": "a.parquet", "metrics": ["m.json"], "previous": [], "population": "p.parquet",
                   "cost": "gmacs"}
    assert type(out["candidates"]) is str and type(out["metrics"]) is list
    with pytest.raises(ValueError, match="'cost' is declared twice"):
        rule_kwargs("rank", [("cost", "a"), ("cost", "b")])
    assert rule_kwargs("train", [], threads=3) == {"threads": 3}
