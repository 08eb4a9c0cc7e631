"""Snakemake adapter: final training of a front model or a paper model (BN, long schedule)."""
from pathlib import Path

from smnas.forkserver import run_job

p, o = snakemake.params, snakemake.output
front = snakemake.input.get("front")
run_job("smnas.workflow:run_final_train",
        (snakemake.wildcards.name, str(front) if front else None, dict(p.final), dict(p.data), dict(p.options),
         str(o.arch), str(Path(o.model).parent)), {"threads": snakemake.threads}, log_file=snakemake.log[0])
