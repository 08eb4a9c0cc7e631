"""Snakemake adapter: a Pascal VOC split to COCO JSON."""
from smnas.data.coco import write_coco
from smnas.data.voc import voc_to_coco
from smnas.workflow import setup_logging

setup_logging(snakemake.log[0])
p = snakemake.params
write_coco(voc_to_coco(p.root, str(p.year), p.split), snakemake.output[0])
