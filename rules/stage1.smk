rule stage1_evaluate_candidate:
    """Train one structure briefly, then its COCO mAP, latency and MACs (metrics.json)."""
    input:
        train_json=rules.make_dataset.output.train_json,
        val_json=rules.make_dataset.output.val_json,
    output:
        metrics="results/stage1/candidates/{hash}/metrics.json",
    params:
        arch=arch_of,
        data=DATA,
        seed=config["seed"],
        device=config["device"],
        train=config["stage1"]["train"],
        detector=config["detector"],
        latency_runs=config["stage1"].get("latency_runs", 10),
    log:
        "results/logs/stage1/{hash}.log",
    benchmark:
        "results/benchmarks/stage1/{hash}.tsv"
    threads: 1
    resources:
        gpus=lambda wc: 1 if config["device"].startswith("cuda") else 0,
        mem_mb=8000,
        runtime=120,
    conda:
        "../envs/smnas.yaml"
    script:
        "../scripts/evaluate_candidate.py"


rule stage1_collect:
    """All evaluated candidates ranked into Pareto fronts (mAP up, latency down)."""
    input:
        metrics=stage1_candidate_metrics,
    output:
        population="results/stage1/gen0/population.parquet",
        front="results/stage1/front.parquet",
        plot="results/stage1/front.png",
    params:
        generation=0,
    log:
        "results/logs/stage1/collect.log",
    localrule: True
    conda:
        "../envs/smnas.yaml"
    script:
        "../scripts/collect_generation.py"
