"""Snakemake adapter: write generation g's candidates (sample, mutate, prune)."""
from smnas.forkserver import run_job

w, i = snakemake.wildcards, snakemake.input
front = i.stage1_front
run_job("smnas.workflow:sample_generation",
        (w.stage, int(w.gen), dict(snakemake.params.config), list(map(str, i.population)),
         str(front) if isinstance(front, str) else list(map(str, front)), str(snakemake.output.table)),
        log_file=snakemake.log[0], start=False)
