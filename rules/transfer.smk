# Transfer: the final architectures trained and evaluated on Pascal VOC (mAP at IoU 0.5, VOC07
# test) and BDD100K (COCO AP, 10 classes) with the final recipe. Paths come from the config;
# without them, the built-in VOC- and BDD-layout variants are used.


rule transfer_train:
    """Train a final architecture on a transfer dataset (BN, final recipe)."""
    input:
        train_json=lambda wc: transfer_data(wc.dataset)["train_json"],
        val_json=lambda wc: transfer_data(wc.dataset)["val_json"],
        arch=rules.final_arch.output.arch,
        weights=transfer_weights,
    output:
        model="results/transfer/{dataset}/{name}/model.pt",
        status="results/transfer/{dataset}/{name}/train.json",
    params:
        data=lambda wc: transfer_data(wc.dataset),
        options=lambda wc: {**stage_options("final"), "scale_jitter": config["final"]["scale_jitter"]},
        gpus=config["final"].get("gpus", 1),
    log:
        "results/logs/transfer/{dataset}/{name}/train.log",
    benchmark:
        "results/benchmarks/transfer/{dataset}.{name}.train.tsv"
    threads: 1
    resources:
        gpu=GPU * config["final"].get("gpus", 1),
        mem_mb=16000 if GPU else 4000,
        runtime=lambda wc: config["runtime_minutes"]["final"],
    conda:
        "../envs/smnas.yaml"
    script:
        "../scripts/run.py"


rule transfer_evaluate:
    """COCO AP (BDD100K) or VOC-style mAP at IoU 0.5 (Pascal VOC) of a transferred model."""
    input:
        model=rules.transfer_train.output.model,
        status=rules.transfer_train.output.status,
        arch=rules.final_arch.output.arch,
    output:
        metrics="results/transfer/{dataset}/{name}/metrics.json",
    params:
        data=lambda wc: transfer_data(wc.dataset),
        options=lambda wc: stage_options("final"),
        metric=lambda wc: wc.dataset if wc.dataset == "voc" else "coco",
    log:
        "results/logs/transfer/{dataset}/{name}/evaluate.log",
    threads: 1
    resources:
        gpu=GPU,
        mem_mb=8000,
        runtime=30,
    conda:
        "../envs/smnas.yaml"
    script:
        "../scripts/run.py"


rule transfer_voc:
    """Target: final architectures on Pascal VOC."""
    input:
        lambda wc: transfer_targets("voc"),


rule transfer_bdd:
    """Target: final architectures on BDD100K."""
    input:
        lambda wc: transfer_targets("bdd"),
