"""The workflow's side of the package: the config check, the function behind each rule, and the
tables a generation writes. ``rules/*.smk`` call into it; nothing here needs Snakemake.

- :mod:`~smnas.workflow.config`: check the config once, turn its blocks into typed settings;
- :mod:`~smnas.workflow.rules`: the table of rules -> functions, and the script adapter;
- :mod:`~smnas.workflow.jobs`: the functions, one per rule;
- :mod:`~smnas.workflow.generations`: sample, mutate and rank a generation's tables;
- :mod:`~smnas.workflow.finals`: which architectures the final and transfer targets train.
"""
