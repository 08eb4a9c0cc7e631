# Final models: architectures picked from the modular front (front0, front1, ...) and the
# paper's named models E0..E5, switched from GN+WS to BatchNorm, trained longer with flip and
# scale-jitter augmentation, evaluated with the official COCO metrics. Hand-designed baselines
# (results/baselines/: Faster R-CNN, RetinaNet, Cascade R-CNN with ResNet-FPN backbones at the
# search's scale) go through the same training, timing and evaluation: {kind} is final or baselines.


checkpoint final_arch:
    """The architecture of a final model: front{i} of the modular front (stage two's, SP-NAS's or
    both, config modular_method) or a paper model, in BN.
    Its own step, so transfer training starts beside final training, not after it."""
    input:
        front=final_front,
    output:
        arch="results/final/{name}/arch.txt",
    params:
        name=lambda wc: wc.name,
        picks=config["final"]["from_front"],
        cost=config["spnas"]["cost"] if config.get("modular_method") == "spnas" else config["stage2"]["cost"],
        paper_input_size=config["final"].get("paper_input_size"),
        # only when set, so that runs from before the option do not rerun for a new param
        **({"pick": config["final"]["pick"]} if "pick" in config["final"] else {}),
    log:
        "results/logs/final/{name}/arch.log",
    localrule: True
    conda:
        "../envs/smnas.yaml"
    script:
        "../scripts/run.py"


checkpoint baseline_arch:
    """A hand-designed detector at the search's scale (smnas.models.paper.BASELINES), in BN."""
    output:
        arch="results/baselines/{name}/arch.txt",
    params:
        name=lambda wc: wc.name,
        width=config["stage1"]["space"]["width"],
        fpn_channels=max(config["stage1"]["space"]["fpn_channels"]),
        head_fc=config["stage1"]["space"]["head_fc"],
        input_size=config["baselines"]["input_size"],
    log:
        "results/logs/baselines/{name}/arch.log",
    localrule: True
    conda:
        "../envs/smnas.yaml"
    script:
        "../scripts/run.py"


checkpoint agreement_arch:
    """A stage-one candidate switched to BN, for the final recipe (search-to-final agreement)."""
    input:
        candidate="results/stage1/candidates/{name}/arch.txt",
    output:
        arch="results/agreement/{name}/arch.txt",
    log:
        "results/logs/agreement/{name}/arch.log",
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
        arch="results/{kind}/{name}/arch.txt",
        weights=model_weights,  # final.init: the pretrained backbone, or none
    output:
        model="results/{kind}/{name}/model.pt",
        status="results/{kind}/{name}/train.json",
    params:
        data=search_data(),
        options=lambda wc: {**stage_options("final"), "scale_jitter": config["final"]["scale_jitter"]},
        gpus=config["final"].get("gpus", 1),
    log:
        "results/logs/{kind}/{name}/train.log",
    benchmark:
        "results/benchmarks/{kind}/{name}.train.tsv"
    threads: 1
    resources:
        gpu=GPU * config["final"].get("gpus", 1),
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
        arch="results/{kind}/{name}/arch.txt",
    output:
        latency="results/{kind}/{name}/latency.json",
    params:
        data=search_data(),
        options=lambda wc: stage_options("final"),
        runs=config["latency_runs"],
        num_images=config["latency_images"],
    log:
        "results/logs/{kind}/{name}/time.log",
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
        arch="results/{kind}/{name}/arch.txt",
        latency=rules.final_time.output.latency,
    output:
        metrics="results/{kind}/{name}/metrics.json",
    params:
        data=search_data(),
        options=lambda wc: stage_options("final"),
        metric="coco",
    log:
        "results/logs/{kind}/{name}/evaluate.log",
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


rule baselines:
    """Target: the hand-designed baselines, trained, timed and evaluated like the final models."""
    input:
        baseline_targets,


rule agreement:
    """Target: every stage-one candidate retrained with the final recipe; bench/evidence.py reads
    the Kendall tau between search-time and final mAP (the paper: short training separates good
    models from bad ones)."""
    input:
        agreement_targets,
