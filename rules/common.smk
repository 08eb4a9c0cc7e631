# Config validation and input functions shared by every rule file.
from snakemake.utils import validate

from smnas.models.spec import spec_hash
from smnas.search.space import space_from_dict

validate(config, "../config/schema.yaml")

SPACE = space_from_dict(config["stage1"]["space"], "config stage1.space")
DATA = "results/data/synthetic"


def stage1_generation0():
    """Generation 0: a seeded random sample of the space (known before any job runs)."""
    return SPACE.sample(config["stage1"]["population"], seed=config["seed"])


def stage1_candidate_metrics(wildcards=None):
    return [f"results/stage1/candidates/{spec_hash(s)}/metrics.json" for s in stage1_generation0()]


def arch_of(wildcards):
    by_hash = {spec_hash(s): str(s) for s in stage1_generation0()}
    return by_hash[wildcards.hash]
