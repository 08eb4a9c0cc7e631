"""Snakemake adapter: the stage's Pareto front table and its plot of the fronts by generation."""
from smnas.forkserver import run_job

stage, o = snakemake.wildcards.stage, snakemake.output
run_job("smnas.report:write_front",
        (list(map(str, snakemake.input.populations)), snakemake.params.cost, str(o.front), str(o.plot),
         f"{stage}: Pareto fronts by generation"), log_file=snakemake.log[0], start=False)
