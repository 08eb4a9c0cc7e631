"""Snakemake adapter: train one search candidate."""
from pathlib import Path

from smnas.forkserver import run_job

p = snakemake.params
run_job("smnas.workflow:run_train", (p.arch, dict(p.data), dict(p.options), str(Path(snakemake.output.model).parent)),
        {"threads": snakemake.threads}, log_file=snakemake.log[0])
