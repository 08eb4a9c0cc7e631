"""Snakemake adapter: evaluate one trained model (search, final or transfer)."""
from pathlib import Path

from smnas.workflow import read_arch, run_evaluate, setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
run_evaluate(read_arch(p, snakemake.input), p.data, p.options, Path(snakemake.output[0]).parent,
             voc_metric="/transfer/voc/" in snakemake.output[0])
