"""Snakemake adapter: train a final architecture on a transfer dataset."""
from pathlib import Path

from smnas.workflow import read_arch, run_train, setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
run_train(read_arch(p, snakemake.input), p.data, p.options, Path(snakemake.output.model).parent,
          threads=snakemake.threads)
