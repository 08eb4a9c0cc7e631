rule make_dataset:
    """The built-in synthetic dataset in COCO, VOC and BDD100K layouts."""
    output:
        train_json=f"{DATA}/coco/annotations/instances_train.json",
        val_json=f"{DATA}/coco/annotations/instances_val.json",
    params:
        out=DATA,
        seed=config["seed"],
        builtin=config["data"]["builtin"],
    log:
        "results/logs/make_dataset.log",
    localrule: True
    script:
        "../scripts/make_dataset.py"
