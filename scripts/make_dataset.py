"""Snakemake adapter: write the built-in dataset."""
from smnas.data.synthetic import make_dataset
from smnas.workflow import setup_logging

setup_logging(snakemake.log[0])
b = snakemake.params.builtin
make_dataset(snakemake.params.out, seed=snakemake.params.seed, num_train=b["num_train"],
             num_val=b["num_val"], image_size=tuple(b["image_size"]))
