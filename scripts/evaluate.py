"""Snakemake adapter: COCO mAP of one trained model, merged with its training and timing records."""
from pathlib import Path

from smnas.forkserver import run_job

p, i, out = snakemake.params, snakemake.input, snakemake.output[0]
arch = p.arch if hasattr(p, "arch") else Path(i.arch).read_text().strip()  # search / final, transfer
run_job("smnas.workflow:run_evaluate", (arch, dict(p.data), dict(p.options), str(Path(out).parent)),
        {"voc_metric": "/transfer/voc/" in out}, log_file=snakemake.log[0])
