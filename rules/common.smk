# Configuration checks and the input functions shared by every rule file.
from pathlib import Path

from smnas.forkserver import prestart as prestart_forkserver
from smnas.workflow.config import ConfigError, check_config, modular_methods

try:
    check_config(config)  # the schema (config/schema.yaml), then paths and spaces
except ConfigError as e:
    raise WorkflowError(str(e)) from None

DATA = "results/data"
BUILTIN = f"{DATA}/synthetic"
GPU = 1 if config["device"].startswith("cuda") else 0
# A screen that times children makes a search's sample step a device job (rules/search.smk).
TIMED_SCREEN = any(config[s].get("screen", 1) > 1 and config[s]["cost"] == "latency_ms" for s in ("stage1", "stage2"))


wildcard_constraints:
    stage="stage1|stage2|spnas",
    # stage one, one stage-two group, or one SP-NAS group's phase; random/: the baseline
    search=r"(random/)?(stage1|stage2/C\d+)|spnas/C\d+/(serial|parallel)",
    pre=r"(random/)?",
    gen=r"\d+",
    hash="[0-9a-f]{12}",
    name=r"front\d+|E\d|[a-z]+_[a-z0-9_]+|[0-9a-f]{12}",  # final: front0.., E0..E5; baselines:
                                                          # faster_r18_fpn, ...; agreement: a hash
    kind="final|baselines|agreement",
    key=r"[A-Za-z0-9_.@+\-]+",  # a backbone identity: resnet18@0.25+gnws, basicblock_16_1-21-21-12
    dataset="voc|bdd",


def last_gen(stage):
    return config[stage]["generations"] - 1


def last_gen_of(search):
    """The last generation of a search (an SP-NAS phase has its own count)."""
    if stage_of(search) == "spnas":
        return config["spnas"][phase_of(search)]["generations"] - 1
    return last_gen(stage_of(search))


def stage_of(search):
    """stage1 -> stage1; stage2/C3 -> stage2; random/stage2/C3 -> stage2; spnas/C0/serial -> spnas."""
    return search.removeprefix("random/").partition("/")[0]


def phase_of(search):
    """spnas/C0/serial -> serial (an SP-NAS search's phase)."""
    return Path(search).name


def group_of(search):
    """stage1 -> ""; stage2/C3 -> C3; spnas/C0/serial -> C0/serial (the sample job splits it)."""
    return search.removeprefix("random/").partition("/")[2]


def sample_settings(search):
    """What the sample step of a search reads from the config: its budget, space and cost, and the
    evolution's screen and edits per child where the config sets them (only those, so an edit
    elsewhere, a training lr say, does not resample)."""
    from smnas.workflow.config import spnas_phase_settings

    stage = stage_of(search)
    if stage == "spnas":
        return spnas_phase_settings(config["spnas"], phase_of(search))
    keys = ("population", "space", "cost") + (() if prefix_of(search) else ("screen", "max_ops"))
    return {k: config[stage][k] for k in keys if k in config[stage]}


def screen_timing(search):
    """What a search's sample step times its children with before the screen keeps some: a
    screen (screen > 1) whose cost is measured time (latency_ms) times each child untrained, on
    the device, as the time rule times a trained one. {} when it times none (random search, no
    screen, a computed cost), so a latency setting then resamples nothing."""
    settings = sample_settings(search)
    if stage_of(search) == "spnas" or settings.get("screen", 1) <= 1 or settings.get("cost") != "latency_ms":
        return {}
    return {"device": config["device"], "num_images": config["latency_images"], "runs": config["latency_runs"],
            "data": search_data()}


def prefix_of(search):
    """"random/" for the random-search baseline's searches, "" for the evolution's."""
    return "random/" if search.startswith("random/") else ""


def stage2_groups(pre=""):
    """The stage-two groups (C0, C1, ...): a checkpoint, decided by the stage-one front."""
    import pandas as pd

    return pd.read_parquet(checkpoints.groups.get(pre=pre).output.groups)["group"].tolist()


def group_fronts(wildcards):
    return [f"results/{wildcards.pre}stage2/{g}/front.parquet" for g in stage2_groups(wildcards.pre)]


def last_populations(wildcards=None):
    """The last population of stage one and of every modular search the config runs."""
    out = [f"results/stage1/gen{last_gen('stage1')}/population.parquet"]
    if "smnas" in modular_methods(config):
        out += [f"results/stage2/{g}/gen{last_gen('stage2')}/population.parquet" for g in stage2_groups()]
    if "spnas" in modular_methods(config):
        out += [f"results/spnas/{g}/{phase}/gen{last_gen_of(f'spnas/{g}/{phase}')}/population.parquet"
                for g in stage2_groups() for phase in ("serial", "parallel")]
    return out


def spnas_fronts(wildcards=None):
    """The serial and the parallel front of every SP-NAS group (groups as stage two's)."""
    return [f"results/spnas/{g}/{phase}/front.parquet" for g in stage2_groups() for phase in ("serial", "parallel")]


def modular_fronts(wildcards=None):
    """The front(s) the final models are picked from: stage two's, SP-NAS's, or both."""
    return {"smnas": ["results/stage2/front.parquet"], "spnas": ["results/spnas/front.parquet"],
            "both": ["results/stage2/front.parquet", "results/spnas/front.parquet"]}[config.get("modular_method", "smnas")]


def search_data():
    """Train/val COCO JSON and image folders of the search dataset."""
    if "coco" in config["data"]:
        return config["data"]["coco"]
    root = f"{BUILTIN}/coco"
    return {
        "train_json": f"{root}/annotations/instances_train.json",
        "train_images": f"{root}/train",
        "val_json": f"{root}/annotations/instances_val.json",
        "val_images": f"{root}/val",
    }


def generation_candidates(wildcards):
    """The candidates table of generation g: a checkpoint, so its contents decide the jobs."""
    return checkpoints.sample.get(search=wildcards.search, gen=wildcards.gen).output.table


def generation_metrics(wildcards):
    """metrics.json of every candidate generation g trains (pruned ones are not trained)."""
    import pandas as pd

    table = pd.read_parquet(generation_candidates(wildcards))
    pending = table[table["status"] == "pending"]
    return [f"results/{stage_of(wildcards.search)}/candidates/{h}/metrics.json" for h in pending["hash"]]


def previous_population(wildcards):
    g = int(wildcards.gen)
    return [f"results/{wildcards.search}/gen{g - 1}/population.parquet"] if g > 0 else []


def retimed_json(search, gen):
    """Generation gen's repeated timings of its front (rule retime), when the search's cost is
    measured time and config latency_measurements > 1; else none."""
    if config[stage_of(search)]["cost"] != "latency_ms" or config["latency_measurements"] == 1 or gen < 0:
        return []
    return f"results/{search}/gen{gen}/retimed.json"


def retimed_of(wildcards):
    return retimed_json(wildcards.search, int(wildcards.gen))


def previous_retimed(wildcards):
    return retimed_json(wildcards.search, int(wildcards.gen) - 1)


def sample_population(wildcards):
    """What generation g samples from: the previous population; for SP-NAS's parallel phase,
    generation 0 widens the best network of its group's serial search (its last population)."""
    search = wildcards.search
    if stage_of(search) == "spnas" and phase_of(search) == "parallel" and int(wildcards.gen) == 0:
        serial = str(Path(search).with_name("serial"))
        return [f"results/{serial}/gen{last_gen_of(serial)}/population.parquet"]
    return previous_population(wildcards)


def candidate_init(wildcards):
    """An SP-NAS candidate starts from the weights it inherits (written by the inherit job)."""
    return [f"results/spnas/candidates/{wildcards.hash}/init.pt"] if wildcards.stage == "spnas" else []


def _parent(wildcards):
    import json

    path = Path(f"results/spnas/candidates/{wildcards.hash}/parent.json")
    if not path.exists():
        raise WorkflowError(f"{path} does not exist: SP-NAS candidates are made by their generation's sample step "
                            "(ask for a search target, e.g. `snakemake spnas`, not for one candidate)")
    return json.loads(path.read_text())


def parent_weights(wildcards):
    """The file an SP-NAS child inherits from, as its sample step wrote it in parent.json: the
    parent's trained model.pt, or a pretrained backbone (the start network; a reignite)."""
    return [_parent(wildcards)["weights"]]


def parent_detector(wildcards):
    """After a reignite, the parent's trained model.pt too (its neck and heads)."""
    return [d for d in [_parent(wildcards).get("detector")] if d]


def stage_options(stage):
    """Run-level settings passed to every candidate job of a stage."""
    return {
        "seed": config["seed"],
        "device": config["device"],
        "train": config[stage]["train"],
        "detector": config["detector"],
    }


def final_names():
    return [f"front{i}" for i in range(config["final"]["from_front"])] + list(config["final"]["paper_models"])


def final_targets(wildcards=None):
    return [f"results/final/{n}/metrics.json" for n in final_names()]


def baseline_targets(wildcards=None):
    return [f"results/baselines/{n}/metrics.json" for n in config["baselines"]["models"]]


def transfer_targets(dataset):
    names = config["transfer"].get("models") or final_names()
    return [f"results/transfer/{dataset}/{n}/metrics.json" for n in names]


def final_front(wildcards):
    """A front model needs the modular front(s) (checkpoints); a paper model needs nothing."""
    if not wildcards.name.startswith("front"):
        return []
    get = {"results/stage2/front.parquet": lambda: checkpoints.stage2_front.get(pre="").output.front,
           "results/spnas/front.parquet": lambda: checkpoints.spnas_front.get().output.front}
    return [get[f]() for f in modular_fronts()]


def transfer_data(dataset):
    """COCO JSON (converted by rules/data.smk) and image folders of a transfer dataset."""
    from smnas.workflow.config import transfer_image_dirs

    train_split, val_split = ("train", "test") if dataset == "voc" else ("train", "val")
    images = transfer_image_dirs(dataset, config["transfer"][dataset], BUILTIN)
    return {
        "train_json": f"{DATA}/{dataset}/{train_split}.json",
        "train_images": images["train"],
        "val_json": f"{DATA}/{dataset}/{val_split}.json",
        "val_images": images["val"],
    }


def pretrain_data_root():
    """The classification data pretraining reads: the built-in crops or an ImageNet tree."""
    return config["pretrain"]["data"].get("imagenet") or f"{DATA}/classification"


def pretrain_data_marker(wildcards):
    return [] if config["pretrain"]["data"].get("imagenet") else f"{DATA}/classification/dataset.json"


def init_weights(section, arch_path):
    """The backbone weights a model of config section ``section`` starts from, as a list of at
    most one path: [] from scratch; a pretraining stage's output; a torchvision file."""
    from smnas.workflow.config import init_weights as weights_for

    if config[section].get("init", "scratch") == "scratch":
        return []
    arch = Path(str(arch_path)).read_text().strip()
    return weights_for(config[section]["init"], arch, config["detector"].get("backbone_weights") or {})


def candidate_weights(wildcards):
    """A stage-one or stage-two candidate's backbone weights, as its section's ``init`` says."""
    if wildcards.stage not in ("stage1", "stage2"):
        return []  # SP-NAS candidates inherit theirs (candidate_init)
    return init_weights(wildcards.stage, f"results/{wildcards.stage}/candidates/{wildcards.hash}/arch.txt")


def model_weights(wildcards):
    """Final models and baselines start as config final.init says (their arch is a checkpoint)."""
    get = {"final": checkpoints.final_arch, "baselines": checkpoints.baseline_arch,
           "agreement": checkpoints.agreement_arch}[wildcards.kind]
    return init_weights("final", get.get(name=wildcards.name).output.arch)


def transfer_weights(wildcards):
    return init_weights("final", checkpoints.final_arch.get(name=wildcards.name).output.arch)


def agreement_targets(wildcards=None):
    """Every stage-one candidate evaluated by the search, retrained with the final recipe."""
    import pandas as pd

    checkpoints.front.get(search="stage1")
    pop = pd.read_parquet(f"results/stage1/gen{last_gen('stage1')}/population.parquet")
    ok = pop[pop["status"] == "ok"]
    from smnas.models.spec import spec_hash

    return [f"results/agreement/{spec_hash(a)}/metrics.json" for a in ok["arch"]]
