# Backbone pretraining as image classification (the paper: ImageNet; on a laptop: crops of the
# built-in shapes), one job per backbone identity {key} (e.g. resnet18@0.25+gnws, or a searched
# encoding), so two models with one backbone pretrain it once. Detectors whose config section
# says `init: pretrain` declare the weights as an input and start from them.


rule pretrain:
    """Train a backbone as a classifier; write its weights (keys as the detector's backbone)."""
    input:
        data=pretrain_data_marker,
    output:
        weights="results/pretrained/{key}/weights.pt",
        metrics="results/pretrained/{key}/metrics.json",
    params:
        key=lambda wc: wc.key,
        data_root=pretrain_data_root(),
        train=config["pretrain"]["train"],
        seed=config["seed"],
        device=config["device"],
        gpus=config["pretrain"].get("gpus", 1),
    log:
        "results/logs/pretrained/{key}/pretrain.log",
    benchmark:
        "results/benchmarks/pretrained/{key}.tsv"
    threads: 1
    resources:
        gpu=GPU * config["pretrain"].get("gpus", 1),
        mem_mb=32000 if GPU else 4000,
        runtime=config["runtime_minutes"].get("pretrain", config["runtime_minutes"]["final"]),
    conda:
        "../envs/smnas.yaml"
    script:
        "../scripts/run.py"


rule pretrained:
    """Target: every backbone the final models start from, pretrained."""
    input:
        lambda wc: [w for n in final_names() for w in init_weights("final", checkpoints.final_arch.get(name=n).output.arch)],
