"""Snakemake adapter: train one search candidate."""
from pathlib import Path

from smnas.workflow import run_train, setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
run_train(p.arch, p.data, p.options, Path(snakemake.output.model).parent, threads=snakemake.threads)
