"""Snakemake adapter: rank a generation's candidates into fronts, write tables and a plot."""
from smnas.workflow import collect_generation, setup_logging, write_generation

setup_logging(snakemake.log[0])
df = collect_generation(snakemake.input.metrics, "stage1", snakemake.params.generation, "latency_ms")
write_generation(df, snakemake.output.population, snakemake.output.front, snakemake.output.plot,
                 "latency_ms", "stage one: mAP vs latency")
