"""Snakemake adapter: rank everything evaluated so far into Pareto fronts."""
from smnas.workflow import rank_generation, setup_logging

setup_logging(snakemake.log[0])
rank_generation(snakemake.input.candidates, snakemake.input.metrics, snakemake.input.previous,
                snakemake.params.cost, snakemake.output[0])
