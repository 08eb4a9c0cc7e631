"""Snakemake adapter: the architecture of a final model (from the stage-two front or the paper)."""
from smnas.forkserver import run_job

front = snakemake.input.get("front")
run_job("smnas.workflow:write_final_arch", (snakemake.wildcards.name, str(front) if front else None,
                                            dict(snakemake.params.final), str(snakemake.output[0])),
        log_file=snakemake.log[0], start=False)
