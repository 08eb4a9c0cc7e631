"""A workflow job on several processes of one node: torchrun, gloo on the CPU."""
from __future__ import annotations

import json

import pytest
import torch

from smnas.models.build import DetectorOptions, build_detector
from smnas.models.spec import parse_spec
from smnas.workflow import jobs
from smnas.workflow.launch import run_distributed

from conftest import TINY_SPEC


def _train_kwargs(tiny_coco, folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "arch.txt").write_text(TINY_SPEC + "\n")
    data = {k: str(tiny_coco[f"coco_{k}"]) for k in ("train_json", "train_images", "val_json", "val_images")}
    options = {"seed": 0, "device": "cpu", "detector": {"rpn_post_nms_top_n": 32, "box_batch_size_per_image": 16},
               "train": {"epochs": 1, "batch_size": 1, "lr": 0.01, "warmup_iters": 0}}
    return dict(arch=str(folder / "arch.txt"), train_json=data["train_json"], val_json=data["val_json"],
                model=str(folder / "model.pt"), status=str(folder / "train.json"), data=data, options=options)


def test_train_job_on_two_processes_writes_once_with_the_global_batch(tiny_coco, tmp_path):
    kwargs = _train_kwargs(tiny_coco, tmp_path / "two")
    jobs.train(**kwargs, gpus=2)
    trained = json.loads((tmp_path / "two" / "train.json").read_text())
    assert trained["status"] == "ok" and trained["world_size"] == 2
    assert trained["train"]["batch_size"] == 1  # per process: the global batch is 2
    state = torch.load(tmp_path / "two" / "model.pt", weights_only=True)
    assert all(not k.startswith("module.") for k in state)  # the bare model, not its DDP wrapper
    model = build_detector(parse_spec(TINY_SPEC), DetectorOptions(num_classes=6))
    model.load_state_dict(state)  # strict: every key of the detector, nothing else


def test_a_failing_process_fails_the_job(tiny_coco, tmp_path):
    kwargs = _train_kwargs(tiny_coco, tmp_path / "bad")
    (tmp_path / "bad" / "arch.txt").write_text("resnet18+none+rpn+retina+96x72+gnws\n")  # invalid: retina takes no RPN
    with pytest.raises(RuntimeError, match="torchrun of train on 2 processes exited with status"):
        run_distributed("train", 2, **kwargs)
    assert not (tmp_path / "bad" / "model.pt").exists()
