"""Snakemake adapter: time one trained model (search candidate or final model)."""
from pathlib import Path

from smnas.workflow import read_arch, run_time, setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
arch = read_arch(p, snakemake.input)
run_time(arch, p.options, Path(snakemake.input.model).parent, p.runs)
