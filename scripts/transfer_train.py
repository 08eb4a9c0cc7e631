"""Snakemake adapter: train a final architecture on a transfer dataset."""
from pathlib import Path

from smnas.forkserver import run_job

p, i = snakemake.params, snakemake.input
run_job("smnas.workflow:run_train", (Path(i.arch).read_text().strip(), dict(p.data), dict(p.options),
                                     str(Path(snakemake.output.model).parent)),
        {"threads": snakemake.threads}, log_file=snakemake.log[0])
