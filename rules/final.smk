# Final models: architectures picked from the stage-two front (front0, front1, ...) and the
# paper's named models E0..E5, switched from GN+WS to BatchNorm, trained longer with flip and
# scale-jitter augmentation, evaluated with the official COCO metrics.


rule final_arch:
    """The architecture of a final model: front{i} of the stage-two front or a paper model, in BN.
    Its own step, so transfer training starts beside final training, not after it."""
    input:
        front=final_front,
    output:
        arch="results/final/{name}/arch.txt",
    params:
        name=lambda wc: wc.name,
        picks=config["final"]["from_front"],
        cost=config["stage2"]["cost"],
        paper_input_size=config["final"].get("paper_input_size"),
    log:
        "results/logs/final/{name}/arch.log",
    localrule: True
    conda:
        "../envs/smnas.yaml"
    script:
        "../scripts/run.py"


rule final_train:
    """Final training of one architecture (BN, long schedule, flip + scale jitter)."""
    input:
        train_json=search_data()["train_json"],
        val_json=search_data()["val_json"],
        arch=rules.final_arch.output.arch,
    output:
        model="results/final/{name}/model.pt",
        status="results/final/{name}/train.json",
    params:
        data=search_data(),
        options=lambda wc: {**stage_options("final"), "scale_jitter": config["final"]["scale_jitter"]},
    log:
        "results/logs/final/{name}/train.log",
    benchmark:
        "results/benchmarks/final/{name}.train.tsv"
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=16000 if GPU else 4000,
        runtime=lambda wc: config["runtime_minutes"]["final"],
    conda:
        "../envs/smnas.yaml"
    script:
        "../scripts/run.py"


rule final_time:
    """Inference time of a final model (exclusive, as in the search)."""
    input:
        search_data()["val_json"],  # unnamed: a dependency; the images are timed
        model=rules.final_train.output.model,
        status=rules.final_train.output.status,
        arch=rules.final_arch.output.arch,
    output:
        latency="results/final/{name}/latency.json",
    params:
        data=search_data(),
        options=lambda wc: stage_options("final"),
        runs=config["latency_runs"],
        num_images=config["latency_images"],
    log:
        "results/logs/final/{name}/time.log",
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=8000,
        runtime=30,
    conda:
        "../envs/smnas.yaml"
    script:
        "../scripts/run.py"


rule final_evaluate:
    """Official COCO metrics (AP, AP50, AP75, APs/m/l) of a final model."""
    input:
        model=rules.final_train.output.model,
        status=rules.final_train.output.status,
        arch=rules.final_arch.output.arch,
        latency=rules.final_time.output.latency,
    output:
        metrics="results/final/{name}/metrics.json",
    params:
        data=search_data(),
        options=lambda wc: stage_options("final"),
        metric="coco",
    log:
        "results/logs/final/{name}/evaluate.log",
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=8000,
        runtime=30,
    conda:
        "../envs/smnas.yaml"
    script:
        "../scripts/run.py"


rule final:
    """Target: every final model trained and evaluated."""
    input:
        final_targets,
