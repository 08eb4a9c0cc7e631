"""Snakemake adapter: the candidates of one generation (random, mutated, or pruned)."""
from smnas.workflow import sample_generation, setup_logging

setup_logging(snakemake.log[0])
w = snakemake.wildcards
sample_generation(w.stage, int(w.gen), snakemake.params.config, snakemake.input.population,
                  snakemake.input.stage1_front, snakemake.output.table)
