# smnas: SM-NAS detector architecture search as a Snakemake workflow.
#
#   snakemake --cores 2                       # the laptop search on the built-in dataset
#   snakemake --profile slurm                 # the same DAG on a SLURM GPU cluster (slurm/profile.yaml)
#   snakemake --cores 2 stage1                # a named target: stage1, stage2, spnas, final, transfer_voc, transfer_bdd
#   snakemake --report results/report.html    # HTML report of the last run
#
# The configuration (config/config.yaml, the manual) is checked against config/schema.yaml.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/search.smk"
include: "rules/spnas.smk"
include: "rules/pretrain.smk"
include: "rules/final.smk"
include: "rules/transfer.smk"
include: "rules/report.smk"


onstart:
    # Jobs run in children of one warm process that imported torch once (smnas/forkserver/);
    # start it now, while the first jobs make the data. Not on a cluster: jobs run elsewhere.
    if workflow.local_exec:
        prestart_forkserver()


rule all:
    default_target: True
    input:
        "results/stage1/front.parquet",
        modular_fronts,  # stage two's front, SP-NAS's, or both (config modular_method)
        final_targets,
        lambda wc: transfer_targets("voc"),
        lambda wc: transfer_targets("bdd"),
        rules.report_plots.output,
