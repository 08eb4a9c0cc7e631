"""Data-parallel training under torchrun: two CPU processes (gloo) against one.

One torchrun job of two processes runs this file as a script (``_worker`` below): a tiny
detector trains data-parallel, a toy model meets a non-finite loss on one process only, and
``smnas pretrain`` runs a GN+WS backbone. The tests compare what it wrote with single-process
runs. GroupNorm (``norm="gnws"``) keeps the comparison exact up to float rounding: BatchNorm
would normalise each process's half batch by its own statistics, and SyncBatchNorm runs on GPUs
only.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from smnas.engine.distributed import DistEnv, dist_env
from smnas.errors import SmnasError

# One optimisation step per epoch in both runs: 6 images, 2 processes x 3 against 1 x 6.
# At 64 px the last level is 2x2: GroupNorm over a 1x1 map (32 px) normalises 2 values per group,
# and its gradients are then too ill-conditioned for a float32 comparison.
PRETRAIN = {"epochs": 2, "batch_size": 3, "lr": 0.02, "warmup_iters": 0, "schedule": "cosine", "image_size": 64,
            "augment": False, "seed": 0}


def _cli_options(values: dict) -> list[str]:
    out = []
    for k, v in values.items():
        out += ["--no-augment"] if k == "augment" and not v else [f"--{k.replace('_', '-')}", str(v)]
    return out


# ---------------------------------------------------------------- environment

def test_no_torchrun_variables_is_one_process():
    assert dist_env({}) == DistEnv(0, 1, 0) and not dist_env({}).distributed and dist_env({}).is_main
    assert dist_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == DistEnv(3, 4, 1)


@pytest.mark.parametrize("environ, match", [
    ({"RANK": "0"}, r"sets \['RANK'\] but not \['WORLD_SIZE', 'LOCAL_RANK'\]"),
    ({"RANK": "a", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "RANK='a'.*expected integers"),
    ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "expected 0 <= LOCAL_RANK <= RANK < WORLD_SIZE"),
])
def test_bad_torchrun_variables(environ, match):
    with pytest.raises(SmnasError, match=match):
        dist_env(environ)


# ---------------------------------------------------------------- the two-process job

@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_coco) -> dict[str, Path]:
    from smnas.data.classification import make_classification_dataset

    root = tmp_path_factory.mktemp("ddp")
    cls = make_classification_dataset(root / "cls", seed=0, num_train=1, num_val=1, image_size=64,
                                      background=False)["root"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__,
           str(root / "out"), str(cls), str(tiny_coco["coco_train_json"]), str(tiny_coco["coco_train_images"])]
    # A session of its own: on a timeout the launcher and both workers go, none is left behind.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stdout[-4000:] + stderr[-4000:]
    return {"out": root / "out", "cls": cls, "stdout": stdout}


def test_two_processes_step_as_one_process_with_the_double_batch(job, tmp_path):
    from smnas.engine.pretrain import PretrainConfig, pretrain_backbone

    two = torch.load(job["out"] / "pre" / "w.pt", weights_only=True)
    runs = {}
    for batch in (6, 3):  # one step of 6 per epoch (the same), two steps of 3 (not the same)
        cfg = PretrainConfig.from_dict({**PRETRAIN, "batch_size": batch})
        pretrain_backbone("resnet18", 0.125, job["cls"], tmp_path / f"{batch}.pt", tmp_path / f"w{batch}", cfg,
                          norm="gnws", progress=False)
        runs[batch] = torch.load(tmp_path / f"{batch}.pt", weights_only=True)
    for k in two:
        torch.testing.assert_close(two[k], runs[6][k], rtol=1e-5, atol=1e-6, msg=k)
    assert max((two[k] - runs[3][k]).abs().max().item() for k in two) > 1e-3
    metrics = json.loads((job["out"] / "pre" / "work" / "metrics.json").read_text())
    single = json.loads((tmp_path / "w6" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["train"]["batch_size"] == 3
    assert metrics["history"][0]["loss"] == pytest.approx(single["history"][0]["loss"], rel=1e-6)


def test_rank0_alone_wrote_the_outputs(job):
    files = sorted(str(p.relative_to(job["out"])) for p in job["out"].rglob("*") if p.is_file())
    assert files == ["det/last.pt", "det/run.json", "det_rank0.pt", "det_rank1.pt", "nan/last.pt", "nan/run.json",
                     "pre/w.pt", "pre/work/last.pt", "pre/work/metrics.json", "pre/work/run.json", "rank0.json",
                     "rank1.json"]
    assert job["stdout"].count('"backbone": "resnet18@0.125+gnws"') == 1  # printed once


def test_the_detector_trains_in_step_on_both_processes(job):
    results = [json.loads((job["out"] / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["det"] for r in results] == [{"status": "ok", "world_size": 2, "epochs": 1}] * 2
    a, b = (torch.load(job["out"] / f"det_rank{r}.pt", weights_only=True) for r in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)  # gradients averaged: one model on both
    ckpt = torch.load(job["out"] / "det" / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng_ranks"]) == 2
    assert not torch.equal(ckpt["rng_ranks"][0]["torch"], ckpt["rng_ranks"][1]["torch"])  # own streams


def test_a_non_finite_loss_on_one_process_stops_both(job):
    nan = [json.loads((job["out"] / f"rank{r}.json").read_text())["nan"] for r in range(2)]
    assert [(n["status"], n["epochs"]) for n in nan] == [("failed", 1), ("failed", 1)]
    assert nan[1]["reason"] == "non-finite loss at epoch 2 step 1: loss_sq=nan"
    assert nan[0]["reason"].startswith("non-finite loss at epoch 2 step 1: on another process (rank 0 had ")


def test_a_two_process_checkpoint_does_not_resume_on_one(job, tmp_path):
    from smnas.engine.pretrain import PretrainConfig, pretrain_backbone

    with pytest.raises(SmnasError, match=r"last.pt: written by a run on 2 process\(es\), now resumed on 1"):
        pretrain_backbone("resnet18", 0.125, job["cls"], tmp_path / "w.pt", job["out"] / "pre" / "work",
                          PretrainConfig.from_dict(PRETRAIN), norm="gnws", progress=False)
    assert not (tmp_path / "w.pt").exists()


# ---------------------------------------------------------------- what each process runs

class _Toy(torch.nn.Module):
    """One weight; the loss turns NaN on one process at its ``nan_at``-th call."""

    def __init__(self, nan_at: int | None):
        super().__init__()
        self.w, self.nan_at, self.calls = torch.nn.Parameter(torch.ones(1)), nan_at, 0

    def forward(self, images, targets):
        self.calls += 1
        loss = ((self.w * torch.stack(images)) ** 2).mean()
        return {"loss_sq": loss * float("nan") if self.calls == self.nan_at else loss}


def _worker(out: Path, cls: str, coco_json: str, coco_images: str) -> int:
    from smnas.cli import main
    from smnas.data.coco import load_coco
    from smnas.data.dataset import DetectionDataset
    from smnas.engine.train import TrainConfig, train
    from smnas.models.build import DetectorOptions, build_detector
    from smnas.models.spec import parse_spec

    from conftest import TINY_SPEC

    rank = dist_env().rank
    data = DetectionDataset(load_coco(coco_json, coco_images), coco_images)
    torch.manual_seed(rank)  # other initial weights per process: DDP must broadcast rank 0's
    model = build_detector(parse_spec(TINY_SPEC), DetectorOptions(
        num_classes=data.num_classes, anchor_scale=4, rpn_post_nms_top_n=64, box_batch_size_per_image=32))
    det = train(model, data, TrainConfig(epochs=1, batch_size=1, lr=0.01, warmup_iters=2), out / "det",
                progress=False)
    torch.save(model.state_dict(), out / f"det_rank{rank}.pt")
    points = [(torch.full((1,), float(i)), {}) for i in range(8)]  # 2 steps of 2 per process per epoch
    nan = train(_Toy(nan_at=3 if rank == 1 else None), points, TrainConfig(epochs=3, batch_size=2, lr=0.01),
                out / "nan", progress=False)
    (out / f"rank{rank}.json").write_text(json.dumps({
        "det": {"status": det.status, "world_size": det.world_size, "epochs": det.epochs},
        "nan": {"status": nan.status, "epochs": nan.epochs, "reason": nan.reason}}))
    return main(["pretrain", "resnet18", "--width", "0.125", "--norm", "gnws", "--data", cls, "--out-weights",
                 str(out / "pre" / "w.pt"), "--workdir", str(out / "pre" / "work"), *_cli_options(PRETRAIN)])


if __name__ == "__main__":  # one process of the torchrun job of the fixture ``job``
    torch.set_num_threads(1)
    sys.exit(_worker(Path(sys.argv[1]), *sys.argv[2:]))
