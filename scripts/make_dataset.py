"""Snakemake adapter: generate the built-in synthetic dataset (needs no torch: no server wait)."""
from smnas.forkserver import run_job

p = snakemake.params
b = p.builtin
run_job("smnas.data.synthetic:make_dataset", (str(p.out),), {"seed": p.seed, "num_train": b["num_train"],
        "num_val": b["num_val"], "image_size": tuple(b["image_size"])}, log_file=snakemake.log[0], start=False)
