"""Snakemake adapter: factor correlations and the final/transfer metrics table."""
from smnas.forkserver import run_job

i, o = snakemake.input, snakemake.output
run_job("smnas.workflow:write_report_tables",
        (list(map(str, i.populations)), [str(f) for f in (*i.final, *i.voc, *i.bdd)], str(o.correlation),
         str(o.correlation_table), str(o.metrics)), log_file=snakemake.log[0], start=False)
