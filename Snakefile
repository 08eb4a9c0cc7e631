# smnas: detector architecture search (SM-NAS) as a Snakemake workflow.
#   snakemake --cores 2                      # the laptop search on the built-in dataset
#   snakemake --cores 2 --configfile my.yaml # your own settings (checked against config/schema.yaml)
configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/stage1.smk"


rule all:
    input:
        "results/stage1/front.parquet",
        "results/stage1/front.png",
