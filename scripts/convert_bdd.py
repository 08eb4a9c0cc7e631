"""Snakemake adapter: BDD100K labels to COCO JSON."""
from smnas.forkserver import run_job

run_job("smnas.workflow:convert_bdd", (str(snakemake.input.labels), str(snakemake.params.images),
                                       str(snakemake.output[0])), log_file=snakemake.log[0], start=False)
