# One search generation g of a stage, as file targets:
#   sample (g = 0: random / seeded; g > 0: mutate the front of g-1; stage two: Partial Order
#   Pruning) -> train -> time -> evaluate -> rank (non-dominated sorting) -> sample g+1 ...
# Candidates live in results/{stage}/candidates/{hash}/, keyed by the hash of the canonical
# architecture string, so an architecture evaluated before is found, never trained again. The
# sample step writes each pending candidate's arch.txt there beside its table (no job per
# candidate); train, time and evaluate declare it as input.
# Every rule runs scripts/run.py: its named inputs, outputs and params are the keyword arguments
# of its function in smnas/workflow/jobs.py (smnas.workflow.rules.JOBS).


checkpoint sample:
    """Generation g's candidates (pending or pruned, with the reason): one checkpoint per generation."""
    input:
        population=previous_population,
        stage1_front=lambda wc: "results/stage1/front.parquet" if wc.stage == "stage2" and wc.gen == "0" else [],
    output:
        table="results/{stage}/gen{gen}/candidates.parquet",
    params:
        stage=lambda wc: wc.stage,
        generation=lambda wc: int(wc.gen),
        seed=config["seed"],
        # only what sampling reads, so an edit elsewhere (training lr, say) does not resample
        settings=lambda wc: {k: config[wc.stage][k] for k in ("population", "space", "cost")},
        stage1_cost=config["stage1"]["cost"],
        candidates_dir=lambda wc: f"results/{wc.stage}/candidates",
    log:
        "results/logs/{stage}/gen{gen}/sample.log",
    localrule: True
    conda:
        "../envs/smnas.yaml"
    script:
        "../scripts/run.py"


rule train:
    """Short training of one candidate; resumes from its last epoch after a crash."""
    output:
        model="results/{stage}/candidates/{hash}/model.pt",
        status="results/{stage}/candidates/{hash}/train.json",
    input:
        arch="results/{stage}/candidates/{hash}/arch.txt",
        train_json=search_data()["train_json"],
        val_json=search_data()["val_json"],
    params:
        data=search_data(),
        options=lambda wc: stage_options(wc.stage),
    log:
        "results/logs/{stage}/candidates/{hash}/train.log",
    benchmark:
        "results/benchmarks/{stage}/{hash}.train.tsv"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=16000 if GPU else 4000,
        runtime=lambda wc: config["runtime_minutes"]["train"],
    conda:
        "../envs/smnas.yaml"
    script:
        "../scripts/run.py"


rule time:
    """Median batch-1 inference time on the target device; never shares the device."""
    input:
        search_data()["val_json"],  # unnamed: a dependency; the images are timed
        arch="results/{stage}/candidates/{hash}/arch.txt",
        model=rules.train.output.model,
        status=rules.train.output.status,
    output:
        latency="results/{stage}/candidates/{hash}/latency.json",
    params:
        data=search_data(),
        options=lambda wc: stage_options(wc.stage),
        runs=config["latency_runs"],
        num_images=config["latency_images"],
    log:
        "results/logs/{stage}/candidates/{hash}/time.log",
    benchmark:
        "results/benchmarks/{stage}/{hash}.time.tsv"
    # One thread. The measurement itself holds smnas's device lock exclusively (other jobs pause
    # between two steps: smnas/engine/device_lock.py); on SLURM a whole node (profile).
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=8000,
        runtime=30,
    conda:
        "../envs/smnas.yaml"
    script:
        "../scripts/run.py"


rule evaluate:
    """COCO mAP on the validation split, merged with training and timing into the table row."""
    input:
        arch="results/{stage}/candidates/{hash}/arch.txt",
        model=rules.train.output.model,
        status=rules.train.output.status,
        latency=rules.time.output.latency,
    output:
        metrics="results/{stage}/candidates/{hash}/metrics.json",
    params:
        data=search_data(),
        options=lambda wc: stage_options(wc.stage),
        metric="coco",
    log:
        "results/logs/{stage}/candidates/{hash}/evaluate.log",
    benchmark:
        "results/benchmarks/{stage}/{hash}.evaluate.tsv"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=8000,
        runtime=30,
    conda:
        "../envs/smnas.yaml"
    script:
        "../scripts/run.py"


rule rank:
    """Everything evaluated up to generation g, ranked into Pareto fronts (non-dominated sorting)."""
    input:
        candidates=generation_candidates,
        metrics=generation_metrics,
        previous=previous_population,
    output:
        population="results/{stage}/gen{gen}/population.parquet",
    params:
        cost=lambda wc: config[wc.stage]["cost"],
    log:
        "results/logs/{stage}/gen{gen}/rank.log",
    localrule: True
    conda:
        "../envs/smnas.yaml"
    script:
        "../scripts/run.py"


checkpoint front:
    """The stage's Pareto front after its last generation (stage two and final training read it)."""
    input:
        populations=lambda wc: [f"results/{wc.stage}/gen{g}/population.parquet" for g in range(last_gen(wc.stage) + 1)],
    output:
        front="results/{stage}/front.parquet",
        plot=report("results/{stage}/fronts.png", category="Search", subcategory="{stage}",
                    caption="../report/fronts.rst"),
    params:
        cost=lambda wc: config[wc.stage]["cost"],
        title=lambda wc: f"{wc.stage}: Pareto fronts by generation",
    log:
        "results/logs/{stage}/front.log",
    localrule: True
    conda:
        "../envs/smnas.yaml"
    script:
        "../scripts/run.py"


rule stage1:
    """Target: the structural search."""
    input:
        "results/stage1/front.parquet",


rule stage2:
    """Target: the modular search (reads the stage-one front)."""
    input:
        "results/stage2/front.parquet",
