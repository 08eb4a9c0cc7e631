# A search generation g, as file targets, for stage one and for each stage-two group:
#   sample (g = 0: random / the group's structure; g > 0: mutate the front of g-1; stage two:
#   Partial Order Pruning within the group) -> train -> time -> evaluate -> [retime: the front's
#   members timed again, when the cost is measured time] -> rank (non-dominated sorting)
#   -> sample g+1 ... -> front.
# {search} is "stage1" or a stage-two group "stage2/C0", "stage2/C1", ... (the paper's C0..C5:
# structures spread along the stage-one front, each searched with its own population, front and
# pruning); stage two's front is the non-dominated set of its groups' fronts.
# Candidates live in results/{stage}/candidates/{hash}/, keyed by the hash of the canonical
# architecture string, so an architecture evaluated before is found, never trained again. The
# sample step writes each pending candidate's arch.txt there beside its table (no job per
# candidate); train, time and evaluate declare it as input.
# Every rule runs scripts/run.py: its named inputs, outputs and params are the keyword arguments
# of its function in smnas/workflow/jobs.py (smnas.workflow.rules.JOBS).


checkpoint groups:
    """Stage two's groups: structures spread along the stage-one front (a checkpoint). It reads
    stage one's last ranked population, not only its front, so that a front of fewer members than
    stage2.space.structures is filled from the next fronts. The random search's stage two
    searches the evolution's groups, so that each stage is a paired comparison (the same
    generation 0, then mutations against uniform draws)."""
    input:
        stage1_population=lambda wc: f"results/stage1/gen{last_gen_of('stage1')}/population.parquet",
    output:
        groups="results/{pre}stage2/groups.parquet",
    params:
        space=config["stage2"]["space"],
        stage1_cost=config["stage1"]["cost"],
    log:
        "results/logs/{pre}stage2/groups.log",
    localrule: True
    conda:
        "../envs/smnas.yaml"
    script:
        "../scripts/run.py"


checkpoint sample:
    """Generation g's candidates (pending or pruned, with the reason): one checkpoint per generation.
    A screen whose cost is latency_ms (stage1.screen with cost latency_ms) times every child it
    judges untrained on the device first, so then this step runs as a device job (on SLURM, an
    exclusive one, as time's), not on the controller."""
    input:
        population=sample_population,
        # stage two's groups (SP-NAS searches inside the same structures)
        groups=lambda wc: f"results/{prefix_of(wc.search)}stage2/groups.parquet" if stage_of(wc.search) != "stage1" else [],
        train_json=search_data()["train_json"],  # the class count, for stage two's cost
        val_json=lambda wc: search_data()["val_json"] if screen_timing(wc.search) else [],  # timed images
    output:
        table="results/{search}/gen{gen}/candidates.parquet",
    params:
        stage=lambda wc: stage_of(wc.search),
        group=lambda wc: group_of(wc.search),
        generation=lambda wc: int(wc.gen),
        seed=config["seed"],
        settings=lambda wc: sample_settings(wc.search),
        detector=config["detector"],
        candidates_dir=lambda wc: f"results/{stage_of(wc.search)}/candidates",
        strategy=lambda wc: "random" if prefix_of(wc.search) else "evolution",
        timing=lambda wc: screen_timing(wc.search),
    log:
        "results/logs/{search}/gen{gen}/sample.log",
    threads: 1
    resources:
        gpu=lambda wc: GPU if screen_timing(wc.search) else 0,
    localrule: not TIMED_SCREEN
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
        weights=candidate_weights,  # stage1/stage2 init: pretrained backbone weights, or none
        init=candidate_init,  # SP-NAS: the detector weights a child inherits (rules/spnas.smk)
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


rule retime:
    """A search whose cost is measured time: the front's members timed again, each until it has
    `latency_measurements` measurements from different moments; the rank step takes the median."""
    input:
        search_data()["val_json"],  # unnamed: a dependency; the images are timed
        candidates=generation_candidates,
        metrics=generation_metrics,
        previous=previous_population,
        previous_retimed=previous_retimed,
    output:
        retimed="results/{search}/gen{gen}/retimed.json",
    params:
        data=search_data(),
        options=lambda wc: stage_options(stage_of(wc.search)),
        runs=config["latency_runs"],
        num_images=config["latency_images"],
        measurements=config["latency_measurements"],
        candidates_dir=lambda wc: f"results/{stage_of(wc.search)}/candidates",
    log:
        "results/logs/{search}/gen{gen}/retime.log",
    benchmark:
        "results/benchmarks/{search}/gen{gen}.retime.tsv"
    threads: 1  # as the time rule: smnas's device lock held while measuring; on SLURM a node
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
        retimed=retimed_of,  # the front's repeated timings, when the cost is measured time
    output:
        population="results/{search}/gen{gen}/population.parquet",
    params:
        cost=lambda wc: config[stage_of(wc.search)]["cost"],
    log:
        "results/logs/{search}/gen{gen}/rank.log",
    localrule: True
    conda:
        "../envs/smnas.yaml"
    script:
        "../scripts/run.py"


checkpoint front:
    """A search's Pareto front after its last generation (stage one's is read by stage two)."""
    input:
        populations=lambda wc: [f"results/{wc.search}/gen{g}/population.parquet"
                                for g in range(last_gen_of(wc.search) + 1)],
    output:
        front="results/{search}/front.parquet",
        plot=report("results/{search}/fronts.png", category="Search", subcategory="{search}",
                    caption="../report/fronts.rst"),
    params:
        cost=lambda wc: config[stage_of(wc.search)]["cost"],
        title=lambda wc: f"{wc.search}: Pareto fronts by generation",
    log:
        "results/logs/{search}/front.log",
    localrule: True
    conda:
        "../envs/smnas.yaml"
    script:
        "../scripts/run.py"


checkpoint stage2_front:
    """Stage two's front: the non-dominated set of its groups' fronts (final training reads it)."""
    input:
        fronts=group_fronts,
    output:
        front="results/{pre}stage2/front.parquet",
        plot=report("results/{pre}stage2/fronts.png", category="Search", subcategory="{pre}stage2",
                    caption="../report/groups.rst"),
    params:
        cost=config["stage2"]["cost"],
    log:
        "results/logs/{pre}stage2/front.log",
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
    """Target: the modular search, one group per structure of the stage-one front."""
    input:
        "results/stage2/front.parquet",


rule random_search:
    """Target: the random-search baseline, same spaces, budget and training as the evolution
    (generation 0 shared; later ones drawn uniformly; stage two in the evolution's groups), in
    results/random/."""
    input:
        "results/random/stage1/front.parquet",
        "results/random/stage2/front.parquet",
