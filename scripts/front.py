"""Snakemake adapter: the stage's final Pareto front and its plot."""
from smnas.report import write_front
from smnas.workflow import setup_logging

setup_logging(snakemake.log[0])
stage = snakemake.wildcards.stage
write_front(snakemake.input.populations, snakemake.params.cost, snakemake.output.front, snakemake.output.plot,
            f"{stage}: Pareto fronts by generation")
