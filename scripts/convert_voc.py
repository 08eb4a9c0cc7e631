"""Snakemake adapter: a Pascal VOC split to COCO JSON."""
from smnas.forkserver import run_job

p = snakemake.params
run_job("smnas.workflow:convert_voc", (str(p.root), str(p.year), str(p.split), str(snakemake.output[0])),
        log_file=snakemake.log[0], start=False)
