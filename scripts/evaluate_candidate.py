"""Snakemake adapter: train and measure one candidate."""
from pathlib import Path

import torch

from smnas.workflow import evaluate_from_config, setup_logging

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
p = snakemake.params
evaluate_from_config(p.arch, Path(p.data) / "coco", Path(snakemake.output.metrics).parent, p.seed, p.device,
                     p.train, p.detector, p.latency_runs)
