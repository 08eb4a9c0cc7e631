"""Snakemake adapter shared by every rule: run the rule's function (smnas.workflow.rules.JOBS)
with the rule's named inputs, outputs and params as keyword arguments."""
from smnas.workflow.rules import run_rule

run_rule(snakemake)
