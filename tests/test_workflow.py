"""The Snakemake workflow end to end at toy size (tests/config_tiny.yaml), resume after SIGKILL,
linting and planning. These run real Snakemake processes: minutes, not seconds."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from smnas.models.spec import spec_hash

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "config_tiny.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", "2"]

pytestmark = pytest.mark.slow


def run(workdir: Path, *args: str, check: bool = True, overlay: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    # --configfile takes several files: targets and other options go before it
    configs = [str(TINY)] + ([str(overlay)] if overlay else [])
    proc = subprocess.run([*SNAKEMAKE, *args, "--directory", str(workdir), "--configfile", *configs],
                          capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("wf")
    run(workdir)
    return workdir


def test_groups_rule_reads_stage_ones_last_ranked_population(full_run):
    # the groups rule must read the last generation's ranked population, not front.parquet, or a
    # front shorter than stage2.space.structures cannot fill in from the next fronts (a unit test
    # of jobs.groups cannot see which file the rule hands it)
    summary = run(full_run, "--detailed-summary", "results/stage2/groups.parquet").stdout
    row = next(line for line in summary.splitlines() if line.startswith("results/stage2/groups.parquet"))
    assert "results/stage1/gen1/population.parquet" in row and "front.parquet" not in row, row


def test_whole_workflow_tables(full_run):
    res = full_run / "results"
    groups = sorted(p.name for p in (res / "stage2").glob("C*"))
    assert groups == ["C0", "C1"]  # config_tiny: two structures from the stage-one front, one search each
    for search, gens, cost in [("stage1", 2, "gmacs")] + [(f"stage2/{g}", 2, "gmacs") for g in groups]:
        pop = pd.read_parquet(res / search / f"gen{gens - 1}" / "population.parquet")
        assert set(pop["generation"]) == {0, 1}
        assert pop["arch"].is_unique  # nothing evaluated twice
        ok = pop[pop["status"] == "ok"]
        assert len(ok) >= 1 and ok["map"].between(0, 1).all() and (ok["gmacs"] > 0).all()
        _check_tables_agree(res / search, res / search.split("/")[0] / "candidates", gens, cost)
    # each group searched inside one structure; stage two's front is the union's non-dominated set
    fronts = [pd.read_parquet(res / "stage2" / g / "front.parquet") for g in groups]
    for g, front in zip(groups, fronts):
        assert (front["group"] == g).all() and len({_structure(a) for a in front["arch"]}) == 1
    assert {_structure(f["arch"].iloc[0]) for f in fronts if len(f)} == {_structure(a) for f in fronts for a in f["arch"]}
    union = pd.read_parquet(res / "stage2" / "front.parquet")
    both = pd.concat(fronts, ignore_index=True)
    for _, row in both.iterrows():
        dominated = ((both["map"] >= row["map"]) & (both["gmacs"] <= row["gmacs"])
                     & ((both["map"] > row["map"]) | (both["gmacs"] < row["gmacs"]))).any()
        assert dominated != (row["arch"] in set(union["arch"])), row["arch"]
    assert (res / "stage2" / "fronts.png").stat().st_size > 1000
    # the evolution screened its children (stage1.screen 3)
    assert "the predictor keeps 2 of 6 children" in (res / "logs" / "stage1" / "gen1" / "sample.log").read_text()
    # ... given their GMACs, computed before training: the trained figures
    kept = pd.read_parquet(res / "stage1" / "gen1" / "candidates.parquet").query("status == 'pending'")
    gm = pd.read_parquet(res / "stage1" / "gen1" / "population.parquet").set_index("arch")["gmacs"]
    assert len(kept) == 2 and all(abs(c - gm[a]) < 1e-9 * gm[a] for a, c in zip(kept["arch"], kept["cost"]))
    stage1 = pd.read_parquet(res / "stage1" / "gen1" / "population.parquet")
    assert (stage1["latency_ms"].dropna() > 0).all() and stage1["device"].str.startswith("cpu").any()
    stage2 = pd.concat([pd.read_parquet(res / "stage2" / g / "gen1" / "population.parquet") for g in groups])
    assert stage2["arch"].str.match(r"^(basicblock|bottleneck|Xbottleneck|invres)_").all()
    # stage two searched inside its groups' structures (same neck levels, RPN, head, size): the
    # stage-one front's, filled from the next front where it has fewer than two members (on some
    # CPUs one tiny model dominates the rest)
    picked = {_structure(a) for a in pd.read_parquet(res / "stage2" / "groups.parquet")["structure"]}
    assert {_structure(a) for a in stage2["arch"]} <= picked
    front1 = pd.read_parquet(res / "stage1" / "front.parquet")["arch"]
    assert (picked <= {_structure(a) for a in front1}) if len(front1) >= 2 else ({_structure(a) for a in front1} < picked)
    # every step records when it computed (bench/workflow.py's overhead share): one span per epoch,
    # one for the timing and one for the evaluation, each inside its job's own time
    for cand in (res / "stage1" / "candidates").iterdir():
        trained = json.loads((cand / "train.json").read_text())
        if trained["status"] != "ok":
            continue
        assert len(trained["spans"]) == trained["epochs"]
        timed, evaluated = (json.loads((cand / f).read_text())["spans"] for f in ("latency.json", "metrics.json"))
        assert trained["spans"][-1][1] <= timed[0][0] < timed[0][1] <= evaluated[0][0] < evaluated[0][1]


def _check_tables_agree(stage_dir: Path, candidates: Path, gens: int, cost: str) -> None:
    """The generation tables, the candidate folders and the front tell one story."""
    pops = [pd.read_parquet(stage_dir / f"gen{g}" / "population.parquet") for g in range(gens)]
    for g in range(gens):
        table = pd.read_parquet(stage_dir / f"gen{g}" / "candidates.parquet")
        pending = table[table["status"] == "pending"]
        # every candidate trained is in the population, with the metrics its folder holds
        pop = pops[g].set_index("arch")
        for arch, hash_ in zip(pending["arch"], pending["hash"]):
            folder = candidates / hash_
            assert (folder / "arch.txt").read_text().strip() == arch
            metrics = json.loads((folder / "metrics.json").read_text())
            assert metrics["arch"] == arch and pop.loc[arch, "status"] == metrics["status"]
            if metrics["status"] == "ok":
                assert pop.loc[arch, "map"] == pytest.approx(metrics["map"])
        # the population of g holds exactly everything sampled up to g
        sampled = set().union(*(set(pd.read_parquet(stage_dir / f"gen{h}" / "candidates.parquet")["arch"]) for h in range(g + 1)))
        assert set(pops[g]["arch"]) == sampled
        # front 0 of g is non-dominated among g's evaluated models, and every other ok row is dominated
        ok = pops[g][pops[g]["status"] == "ok"]
        for _, row in ok.iterrows():
            dominated = ((ok["map"] >= row["map"]) & (ok[cost] <= row[cost])
                         & ((ok["map"] > row["map"]) | (ok[cost] < row[cost]))).any()
            assert dominated == (row["front_rank"] > 0), row["arch"]
        if g > 0:  # g's parents sit on g-1's front (later fronts fill in only while it has < n members)
            prev = pops[g - 1].set_index("arch")
            n = len(pending)
            counts = prev.loc[prev["front_rank"] >= 0, "front_rank"].value_counts().sort_index().cumsum()
            deepest = int(counts.index[(counts >= n).argmax()]) if (counts >= n).any() else int(counts.index[-1])
            ranks = prev.loc[list(set(table["parent"])), "front_rank"]
            assert ((ranks >= 0) & (ranks <= deepest)).all(), ranks
        # a pruned row names models evaluated before it in its own search (never another group's)
        for reason in table.loc[table["status"] == "pruned", "reason"]:
            m = re.match(r"partial order pruning: contained in (\S+) .*; (\S+) has acc", reason)
            assert m and g > 0, reason
            evaluated = set(pops[g - 1].loc[pops[g - 1]["status"] == "ok", "arch"])
            assert {m[1], m[2]} <= evaluated, reason
    front = pd.read_parquet(stage_dir / "front.parquet")
    assert set(front["arch"]) == set(pops[-1].loc[pops[-1]["front_rank"] == 0, "arch"])
    assert (stage_dir / "fronts.png").stat().st_size > 1000


def _structure(arch: str) -> tuple[str, ...]:
    _, neck, rpn, head, size, _ = arch.split("+")
    return neck.rsplit(":", 1)[0], rpn, head.split(":")[0], size


def test_final_and_transfer_metrics(full_run):
    res = full_run / "results"
    for name in ("front0", "E0"):
        m = json.loads((res / "final" / name / "metrics.json").read_text())
        assert m["status"] == "ok" and m["arch"].endswith("+bn") and {"map", "map50", "map75", "maps", "mapm", "mapl"} <= set(m)
        assert json.loads((res / "final" / name / "train.json").read_text())["train"]["epochs"] == 2
        voc = json.loads((res / "transfer" / "voc" / name / "metrics.json").read_text())
        assert voc["arch"] == m["arch"] and 0 <= voc["voc_map50"] <= 1
        bdd = json.loads((res / "transfer" / "bdd" / name / "metrics.json").read_text())
        assert bdd["arch"] == m["arch"] and 0 <= bdd["map"] <= 1
    table = pd.read_csv(res / "analysis" / "final_metrics.csv")
    assert set(table["kind"]) == {"final", "baselines", "transfer_voc", "transfer_bdd"} and len(table) == 8
    assert (res / "analysis" / "backbone_factors.png").exists()
    # the hand-designed baselines at the search's scale, trained, timed and evaluated like final models
    from smnas.models.baselines import baseline_spec

    for name, expected in (("faster_r18_fpn", "resnet18@0.125+fpn:P1-P5:c16+rpn+2fc:32+64x48+bn"),
                           ("retina_r50_fpn", "resnet50@0.125+fpn:P2-P6:c16+none+retina+64x48+bn")):
        row = table[(table["kind"] == "baselines") & (table["name"] == name)].iloc[0]
        assert row["arch"] == expected == str(baseline_spec(name, 0.125, 16, 32, (64, 48)))
        assert row["status"] == "ok" and row["latency_ms"] > 0 and 0 <= row["map"] <= 1
        assert json.loads((res / "baselines" / name / "train.json").read_text())["train"]["epochs"] == 2
    assert (res / "analysis" / "speed_accuracy.png").stat().st_size > 1000
    # pretraining on the built-in crops, once per backbone identity, for stage one and final models
    from smnas.models.registry import backbone_key
    from smnas.models.spec import parse_spec

    for name in ("front0", "E0"):
        spec = parse_spec((res / "final" / name / "arch.txt").read_text().strip())
        metrics = json.loads((res / "pretrained" / backbone_key(spec.backbone.name, spec.backbone.width, "bn")
                              / "metrics.json").read_text())
        assert 0 <= metrics["top1"] <= metrics["top5"] <= 1
        trained = json.loads((res / "final" / name / "train.json").read_text())
        assert trained["train"]["schedule"] == "step" and trained["train"]["milestones"] == [1]
    # stage one's candidates (named backbones) and stage two's (encodings, in GN+WS) start pretrained
    stage1 = pd.read_parquet(res / "stage1" / "gen1" / "population.parquet")
    stage2 = pd.concat(pd.read_parquet(p) for p in (res / "stage2").glob("C*/gen1/population.parquet"))
    trained = stage2[stage2["status"] == "ok"]
    assert len(trained) >= 2
    for table, norm in ((stage1, None), (trained, "gnws")):
        specs = list(map(parse_spec, table["arch"]))
        assert norm is None or {s.norm for s in specs} == {norm}
        keys = {backbone_key(s.backbone.name, s.backbone.width, s.norm) for s in specs}
        assert all((res / "pretrained" / k / "weights.pt").exists() for k in keys)
    assert (res / "data" / "classification" / "dataset.json").exists()


def test_report_html(full_run):
    run(full_run, "--report", "results/report.html")
    html = (full_run / "results" / "report.html").read_text(errors="ignore")
    assert "fronts.png" in html and "final_metrics.csv" in html
    # the report embeds each stage's front plot and the final metrics table byte for byte
    import base64

    for path in ("stage1/fronts.png", "stage2/fronts.png", "stage2/C0/fronts.png", "stage2/C1/fronts.png",
                 "analysis/final_metrics.csv"):
        data = base64.b64encode((full_run / "results" / path).read_bytes()).decode()
        assert data[:2000] in html, path


def _front(workdir: Path) -> pd.DataFrame:
    df = pd.read_parquet(workdir / "results" / "stage1" / "front.parquet")
    return df[["arch", "map", "gmacs"]].sort_values("arch").reset_index(drop=True)


def test_resume_after_sigkill_gives_the_same_front(full_run, tmp_path):
    proc = subprocess.Popen([*SNAKEMAKE, "stage1", "--directory", str(tmp_path), "--configfile", str(TINY)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    # Kill everything (snakemake and its jobs) once a training has written its first checkpoint.
    deadline = time.time() + 600
    while not list(tmp_path.glob("results/stage1/candidates/*/train/last.pt")):
        assert proc.poll() is None and time.time() < deadline, "the workflow ended before any checkpoint"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "results" / "stage1" / "front.parquet").exists()
    # What the README says to do after a hard kill: release the stale lock, run the same command.
    run(tmp_path, "--unlock")
    run(tmp_path, "stage1")
    pd.testing.assert_frame_equal(_front(tmp_path), _front(full_run))


def test_a_search_timed_by_latency_times_its_front_again(tmp_path):
    """stage1.cost latency_ms: each generation's retime job measures every front member again
    (config_tiny: latency_measurements 2) and the population ranks it by the median."""
    overlay = tmp_path / "timed.yaml"
    overlay.write_text("stage1:\n  cost: latency_ms\n")
    run(tmp_path, "results/stage1/gen1/population.parquet", overlay=overlay)
    stage1 = tmp_path / "results/stage1"
    retimed = [json.loads((stage1 / f"gen{g}/retimed.json").read_text()) for g in (0, 1)]
    assert set(retimed[0]) <= set(retimed[1])  # the file carries every earlier generation's measurements
    for g in (0, 1):
        pop = pd.read_parquet(stage1 / f"gen{g}/population.parquet")
        front = pop[pop["front_rank"] == 0]
        assert len(front) and (front["latency_samples"] == 2).all()
        for row in front.itertuples():
            times = retimed[g][row.arch]
            assert len(times) == 2 and row.latency_ms == pytest.approx(sum(times) / 2)
            first = json.loads((stage1 / "candidates" / spec_hash(row.arch) / "latency.json").read_text())
            assert times[0] == first["latency_ms"]  # the time rule's measurement comes first
        rest = pop[(pop["front_rank"] > 0) & ~pop["arch"].isin(retimed[g])]
        assert (rest["latency_samples"] == 1).all()


def test_lint_and_plans(tmp_path):
    lint = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--lint"],
                          capture_output=True, text=True, cwd=REPO)
    assert lint.returncode == 0 and "Congratulations" in lint.stdout + lint.stderr, lint.stdout + lint.stderr
    plan = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--profile", "slurm"], capture_output=True, text=True, cwd=REPO)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "sample" in plan.stdout


def test_bad_config_fails_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text().replace("generations: 2\n  population: 2\n  cost: gmacs", "generations: 0\n  population: 2\n  cost: gmacs"))
    proc = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(bad), "-n"], capture_output=True, text=True)
    assert proc.returncode != 0 and "generations" in proc.stdout + proc.stderr
    bad.write_text(TINY.read_text() + "\nunknown_key: 1\n")
    proc = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(bad), "-n"], capture_output=True, text=True)
    assert proc.returncode != 0 and "unknown_key" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_a_latency_screen_times_its_children_untrained(full_run, tmp_path):
    """With stage one's cost latency_ms, the screen's sample step times each child it judges
    untrained (as the time rule times a trained one) and keeps those the predictor prefers."""
    shutil.copytree(full_run / "results", tmp_path / "results", symlinks=True)
    overlay = tmp_path / "latency.yaml"
    overlay.write_text("stage1:\n  cost: latency_ms\n")
    run(tmp_path, "--force", "results/stage1/gen1/candidates.parquet", "--rerun-triggers", "mtime", overlay=overlay)
    log = (tmp_path / "results" / "logs" / "stage1" / "gen1" / "sample.log").read_text()
    assert log.count("timed untrained: ") == 6 and "the predictor keeps 2 of 6 children" in log
    kept = pd.read_parquet(tmp_path / "results" / "stage1" / "gen1" / "candidates.parquet").query("status == 'pending'")
    assert len(kept) == 2 and (kept["cost"] > 0).all()
    for arch, cost in zip(kept["arch"], kept["cost"]):
        assert f"timed untrained: {arch} {cost:.1f} ms" in log


def test_random_search_baseline(full_run):
    """Same spaces and budget: generation 0 is the evolution's (already trained, found by hash),
    later generations are uniform draws with no parent; stage two in the evolution's groups."""
    run(full_run, "random_search")
    res = full_run / "results"
    for search in ("stage1", "stage2/C0"):
        evo = pd.read_parquet(res / search / "gen0" / "candidates.parquet")
        rnd = pd.read_parquet(res / "random" / search / "gen0" / "candidates.parquet")
        assert rnd["arch"].tolist() == evo["arch"].tolist()
        later = pd.read_parquet(res / "random" / search / "gen1" / "candidates.parquet")
        assert (later["parent"] == "").all() and not set(later["arch"]) & set(rnd["arch"])
        assert len(later) == len(evo)
    assert "predictor" not in (res / "logs" / "random" / "stage1" / "gen1" / "sample.log").read_text()  # no screen
    groups = pd.read_parquet(res / "random" / "stage2" / "groups.parquet")
    pd.testing.assert_frame_equal(groups, pd.read_parquet(res / "stage2" / "groups.parquet"))
    assert sorted(p.name for p in (res / "random" / "stage2").glob("C*")) == groups["group"].tolist()
    union = pd.read_parquet(res / "random" / "stage2" / "front.parquet")
    assert len(union) >= 1 and (union["front_rank"] == 0).all()


def test_paper_config_plans_on_slurm(tmp_path):
    """`snakemake --profile slurm --configfile config/paper.yaml -n` plans the paper's recipe once
    its paths exist (here: empty stand-ins): pretraining on ImageNet, stage one from torchvision
    weights, 8-GPU final jobs."""
    text = (REPO / "config" / "paper.yaml").read_text()
    for path in sorted(set(re.findall(r"/data/[^\s,}]+", text))):
        local = tmp_path / path.lstrip("/")
        if local.suffix in (".json", ".pth"):
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text("{}")
        else:
            local.mkdir(parents=True, exist_ok=True)
    for sub in ("imagenet/train", "imagenet/val", "voc/VOCdevkit/VOC2007", "voc/VOCdevkit/VOC2012"):
        (tmp_path / "data" / sub).mkdir(parents=True, exist_ok=True)
    config = tmp_path / "paper.yaml"
    config.write_text(text.replace("/data/", f"{tmp_path}/data/"))
    plan = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "-n",
                           "--profile", str(REPO / "slurm"), "--directory", str(tmp_path), "--configfile", str(config)],
                          capture_output=True, text=True)
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
    assert "rule sample" in plan.stdout or "checkpoint sample" in plan.stdout


def test_agreement_retrains_the_search_candidates_with_the_final_recipe(full_run):
    run(full_run, "agreement")
    res = full_run / "results"
    pop = pd.read_parquet(res / "stage1" / "gen1" / "population.parquet")
    from smnas.models.spec import spec_hash

    for arch in pop.loc[pop["status"] == "ok", "arch"]:
        m = json.loads((res / "agreement" / spec_hash(arch) / "metrics.json").read_text())
        assert m["arch"] == arch.replace("+gnws", "+bn") and 0 <= m["map"] <= 1
        assert json.loads((res / "agreement" / spec_hash(arch) / "train.json").read_text())["train"]["schedule"] == "step"


def test_spnas_serial_with_a_reignite_then_parallel_and_a_final_model_from_its_front(full_run, tmp_path):
    """modular_method spnas on the finished tiny run (a copy: stage one is reused): the serial
    search grows a pretrained start network, generation 2 reignites (config_tiny: min_gain 1000),
    the parallel search widens the serial best, and front0 comes from SP-NAS's front."""
    import shutil

    from smnas.models.encoding import parse_encoding
    from smnas.models.registry import backbone_key
    from smnas.models.spec import parse_spec, spec_hash

    work = tmp_path / "wf"
    shutil.copytree(full_run, work, symlinks=True)  # copy2 keeps modification times: nothing reruns
    run(work, "spnas", "final", "--config", "modular_method=spnas")
    res = work / "results"
    cands = res / "spnas" / "candidates"
    for group in ("C0", "C1"):
        serial = res / "spnas" / group / "serial"
        _check_tables_agree(serial, cands, 3, "gmacs")
        pop = pd.read_parquet(serial / "gen2" / "population.parquet")
        assert pop.groupby("generation")["init"].agg(set).to_dict() == {0: {"pretrained"}, 1: {"inherited"},
                                                                        2: {"reignited"}}
        start = pop[(pop["generation"] == 0) & (pop["parent"] == "")]
        assert len(start) == 1 and parse_spec(start["arch"].iloc[0]).backbone.name.startswith("basicblock_8_")
        for row in pop.itertuples():
            parent = json.loads((cands / spec_hash(row.arch) / "parent.json").read_text())
            weights = Path(parent["weights"])
            if row.init == "inherited":  # the parent's trained detector
                assert weights == Path("results/spnas/candidates") / spec_hash(row.parent) / "model.pt"
            else:  # a pretraining of the start network, or of the parent again (reignite)
                key = backbone_key(parse_spec(row.parent or row.arch).backbone.name, 1.0, "gnws")
                assert weights == Path("results/pretrained") / key / "weights.pt"
                if row.init == "reignited":  # neck and heads from the parent's trained detector
                    assert parent["detector"] == f"results/spnas/candidates/{spec_hash(row.parent)}/model.pt"
            assert (work / weights).exists() and (cands / spec_hash(row.arch) / "init.pt").exists()
        log = (res / "logs" / "spnas" / "candidates" / spec_hash(pop["arch"].iloc[-1]) / "inherit.log").read_text()
        assert "tensors inherited" in log
        parallel = res / "spnas" / group / "parallel"
        _check_tables_agree(parallel, cands, 1, "gmacs")
        wide = pd.read_parquet(parallel / "gen0" / "population.parquet")
        best = pop[pop["front_rank"] == 0].sort_values(["map", "gmacs"], ascending=[False, True])["arch"].iloc[0]
        assert len(wide) == 2 and (wide["parent"] == best).all()
        for arch in wide["arch"]:  # the serial best's trunk with parallel copies
            enc = parse_encoding(parse_spec(arch).backbone.name)
            assert str(enc.serial) == parse_spec(best).backbone.name and any(enc.parallel)
    fronts = [pd.read_parquet(res / "spnas" / g / p / "front.parquet") for g in ("C0", "C1") for p in ("serial", "parallel")]
    both = pd.concat(fronts, ignore_index=True)
    union = pd.read_parquet(res / "spnas" / "front.parquet")
    non_dominated = {r.arch for r in both.itertuples()
                     if not ((both["map"] >= r.map) & (both["gmacs"] <= r.gmacs) & ((both["map"] > r.map) | (both["gmacs"] < r.gmacs))).any()}
    assert set(union["arch"]) == non_dominated
    front0 = parse_spec((res / "final" / "front0" / "arch.txt").read_text())
    best = union.sort_values(["map", "gmacs"], ascending=[False, True])["arch"].iloc[0]
    assert front0 == parse_spec(best).with_norm("bn")
    assert 0 <= json.loads((res / "final" / "front0" / "metrics.json").read_text())["map"] <= 1
