"""Snakemake adapter: BDD100K det_20 labels to COCO JSON."""
import logging
import warnings

from smnas.data.bdd import bdd_to_coco
from smnas.data.coco import write_coco
from smnas.workflow import setup_logging

setup_logging(snakemake.log[0])
logging.captureWarnings(True)  # the count of skipped categories goes to the log
warnings.simplefilter("always")
write_coco(bdd_to_coco(snakemake.input.labels, snakemake.params.images), snakemake.output[0])
