"""Snakemake adapter: final training of a front or paper architecture (BN, long schedule)."""
from pathlib import Path

from smnas.workflow import final_arch, run_train, setup_logging, write_arch

setup_logging(snakemake.log[0])
p = snakemake.params
spec = final_arch(snakemake.wildcards.name, snakemake.input.get("front"), p.final)
write_arch(spec, snakemake.output.arch)
run_train(str(spec), p.data, p.options, Path(snakemake.output.model).parent, threads=snakemake.threads)
