# SP-NAS (Jiang et al., CVPR 2020) as the second modular method (config modular_method: spnas or
# both): for each stage-two group's structure, a serial search (spnas/C0/serial: swaps and
# expands of a small pretrained backbone, each child inheriting its parent's weights; a reignite
# pretrains the parents again when the front stalls) and a parallel search (spnas/C0/parallel:
# parallel copies per stage on the serial best, under a MACs limit). Both are searches like
# stage two's: the sample, train, time, evaluate, rank and front rules of rules/search.smk, with
# candidates in results/spnas/candidates/{hash}/. What is SP-NAS's own is here: each child's
# inherited weights (init.pt, from the parent.json its sample step wrote) and the front over all
# groups and both phases. smnas.workflow.spnas documents the method.


rule inherit:
    """An SP-NAS child's initial weights: its parent's, carried across the morph."""
    input:
        arch="results/spnas/candidates/{hash}/arch.txt",
        parent="results/spnas/candidates/{hash}/parent.json",
        weights=parent_weights,  # the parent's model.pt, or a pretrained backbone (start, reignite)
        detector=parent_detector,  # after a reignite: the parent's model.pt (neck and heads)
        train_json=search_data()["train_json"],
    output:
        init="results/spnas/candidates/{hash}/init.pt",
    params:
        options=stage_options("spnas") if "spnas" in config else {},
    log:
        "results/logs/spnas/candidates/{hash}/inherit.log",
    benchmark:
        "results/benchmarks/spnas/{hash}.inherit.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        "../envs/smnas.yaml"
    script:
        "../scripts/run.py"


checkpoint spnas_front:
    """SP-NAS's front: the non-dominated set of every group's serial and parallel fronts."""
    input:
        fronts=spnas_fronts,
    output:
        front="results/spnas/front.parquet",
        plot=report("results/spnas/fronts.png", category="Search", subcategory="spnas",
                    caption="../report/spnas.rst"),
    params:
        cost=config["spnas"]["cost"] if "spnas" in config else "gmacs",
        labels=lambda wc: [f"{g} {phase}" for g in stage2_groups() for phase in ("serial", "parallel")],
        title="SP-NAS: each group's serial and parallel fronts and the union",
    log:
        "results/logs/spnas/front.log",
    localrule: True
    conda:
        "../envs/smnas.yaml"
    script:
        "../scripts/run.py"


rule spnas:
    """Target: the SP-NAS modular search (both phases, every group)."""
    input:
        "results/spnas/front.parquet",
