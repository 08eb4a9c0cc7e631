"""Snakemake adapter: time one trained model (search candidate or final model)."""
from pathlib import Path

from smnas.forkserver import run_job

p, i = snakemake.params, snakemake.input
arch = p.arch if hasattr(p, "arch") else Path(i.arch).read_text().strip()  # search / final, transfer
run_job("smnas.workflow:run_time", (arch, dict(p.options), str(Path(i.model).parent), p.runs), log_file=snakemake.log[0])
