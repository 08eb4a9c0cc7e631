"""Snakemake adapter: backbone-factor correlations and the final/transfer metrics table."""
from smnas.workflow import setup_logging, write_report_tables

setup_logging(snakemake.log[0])
i, o = snakemake.input, snakemake.output
write_report_tables(i.populations, [*i.final, *i.voc, *i.bdd], o.correlation, o.correlation_table, o.metrics)
