"""Snakemake adapter: train one model: a search candidate (its ``arch`` param) or a final or
transfer model (its ``arch`` input file)."""
from pathlib import Path

from smnas.forkserver import run_job

p, i = snakemake.params, snakemake.input
arch = p.arch if hasattr(p, "arch") else Path(i.arch).read_text().strip()
run_job("smnas.workflow:run_train", (arch, dict(p.data), dict(p.options), str(Path(snakemake.output.model).parent)),
        {"threads": snakemake.threads}, log_file=snakemake.log[0])
