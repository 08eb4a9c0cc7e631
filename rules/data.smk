rule make_dataset:
    """The built-in synthetic dataset in COCO, Pascal VOC and BDD100K layouts (seconds)."""
    output:
        coco_train=f"{BUILTIN}/coco/annotations/instances_train.json",
        coco_val=f"{BUILTIN}/coco/annotations/instances_val.json",
        voc_test=f"{BUILTIN}/voc/VOCdevkit/VOC2007/ImageSets/Main/test.txt",
        bdd_train=f"{BUILTIN}/bdd/labels/det_20/det_train.json",
        bdd_val=f"{BUILTIN}/bdd/labels/det_20/det_val.json",
    params:
        seed=config["seed"],
        builtin=lambda wc: config["data"]["builtin"],  # only for the built-in data
    log:
        "results/logs/make_dataset.log",
    localrule: True
    conda:
        "../envs/smnas.yaml"
    script:
        "../scripts/run.py"


rule convert_voc:
    """Pascal VOC split (07, 12 or 07+12) to COCO JSON; difficult objects kept as iscrowd."""
    input:
        lambda wc: [] if config["transfer"]["voc"].get("root") else rules.make_dataset.output.voc_test,
    output:
        json=f"{DATA}/voc/{{split}}.json",
    params:
        root=lambda wc: config["transfer"]["voc"].get("root") or f"{BUILTIN}/voc",
        year=lambda wc: config["transfer"]["voc"][f"{wc.split}_year"],
        split=lambda wc: config["transfer"]["voc"][f"{wc.split}_split"],
    wildcard_constraints:
        split="train|test",
    log:
        f"results/logs/convert_voc_{{split}}.log",
    localrule: True
    conda:
        "../envs/smnas.yaml"
    script:
        "../scripts/run.py"


rule convert_bdd:
    """BDD100K det_20 labels to COCO JSON (the 10 detection classes)."""
    input:
        labels=lambda wc: config["transfer"]["bdd"].get(f"{wc.split}_labels") or f"{BUILTIN}/bdd/labels/det_20/det_{wc.split}.json",
    output:
        json=f"{DATA}/bdd/{{split}}.json",
    params:
        images=lambda wc: config["transfer"]["bdd"].get(f"{wc.split}_images") or f"{BUILTIN}/bdd/images/100k/{wc.split}",
    wildcard_constraints:
        split="train|val",
    log:
        f"results/logs/convert_bdd_{{split}}.log",
    localrule: True
    conda:
        "../envs/smnas.yaml"
    script:
        "../scripts/run.py"


rule make_classification:
    """Classification crops of the built-in dataset's shapes (ImageFolder layout), for pretraining."""
    output:
        manifest=f"{DATA}/classification/dataset.json",
    params:
        seed=config["seed"],
        builtin=lambda wc: config["pretrain"]["data"]["builtin"],
    log:
        "results/logs/make_classification.log",
    localrule: True
    conda:
        "../envs/smnas.yaml"
    script:
        "../scripts/run.py"
