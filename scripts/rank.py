"""Snakemake adapter: rank everything evaluated so far into Pareto fronts."""
from smnas.forkserver import run_job

i = snakemake.input
run_job("smnas.workflow:rank_generation",
        (str(i.candidates), list(map(str, i.metrics)), list(map(str, i.previous)), snakemake.params.cost,
         str(snakemake.output[0])), log_file=snakemake.log[0], start=False)
