"""Backbone pretraining: the classification dataset, ImageFolder errors, weights a detector loads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import smnas.engine.pretrain as pretrain_mod
from smnas.cli import main
from smnas.data import scenes
from smnas.data.classification import (MIN_TARGET_VISIBLE, class_names, load_image_folder, load_image_folders,
                                       make_classification_dataset, render_crop)
from smnas.engine.pretrain import PretrainConfig, evaluate_classifier, pretrain_backbone
from smnas.engine.train import TrainConfig
from smnas.errors import DataFormatError, SmnasError, SpecError
from smnas.models.backbones import build_backbone, load_backbone_weights
from smnas.models.build import DetectorOptions, build_detector
from smnas.models.norm import FrozenStatsBatchNorm2d
from smnas.models.registry import backbone_key, parse_backbone_key
from smnas.models.spec import parse_spec

CFG = PretrainConfig(optim=TrainConfig(epochs=2, batch_size=4, lr=0.05, warmup_iters=2, grad_clip=None, seed=1),
                     image_size=32, crop_scale=(0.5, 1.0))
BN_SPEC = "resnet18@0.125+fpn:P2-P4:c16+rpn+2fc:32+96x72+bn"


@pytest.fixture(scope="session")
def tiny_cls(tmp_path_factory) -> Path:
    """7 classes (6 shapes, background) x 2 train, 1 val crop of 32x32."""
    root = tmp_path_factory.mktemp("cls")
    make_classification_dataset(root, seed=0, num_train=2, num_val=1, image_size=32)
    return root


@pytest.fixture(scope="session")
def pretrained(tiny_cls, tmp_path_factory) -> tuple[Path, dict]:
    """resnet18@0.125 (BN) pretrained for 2 epochs on tiny_cls: (weights file, metrics)."""
    out = tmp_path_factory.mktemp("pretrained")
    metrics = pretrain_backbone("resnet18", 0.125, tiny_cls, out / "w.pt", out / "work", CFG, progress=False)
    return out / "w.pt", metrics


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- the dataset

def test_layout_classes_and_sizes(tiny_cls):
    assert sorted(p.name for p in (tiny_cls / "train").iterdir()) == sorted(class_names())
    assert len(class_names()) == 7 and class_names(background=False) == class_names()[:6]
    for split, count in (("train", 2), ("val", 1)):
        for name in class_names():
            files = sorted(p.name for p in (tiny_cls / split / name).iterdir())
            assert files == [f"{i:05d}.png" for i in range(count)]
    with Image.open(tiny_cls / "val" / "star" / "00000.png") as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    manifest = json.loads((tiny_cls / "dataset.json").read_text())
    assert manifest["classes"] == list(class_names()) and manifest["num_train_per_class"] == 2


def test_same_seed_same_bytes_whatever_the_counts(tiny_cls, tmp_path):
    make_classification_dataset(tmp_path, seed=0, num_train=3, num_val=1, image_size=32)
    ours, small = _files(tmp_path), _files(tiny_cls)
    assert {k: v for k, v in ours.items() if "00002" not in k and k != "dataset.json"} == \
        {k: v for k, v in small.items() if k != "dataset.json"}
    make_classification_dataset(tmp_path / "other", seed=1, num_train=1, num_val=1, image_size=32)
    assert (tmp_path / "other/train/ring/00000.png").read_bytes() != ours["train/ring/00000.png"]


def test_rerun_is_idempotent_and_drops_images_past_the_count(tmp_path):
    make_classification_dataset(tmp_path, seed=0, num_train=3, num_val=1, image_size=32, background=False)
    first = _files(tmp_path)
    make_classification_dataset(tmp_path, seed=0, num_train=3, num_val=1, image_size=32, background=False)
    assert _files(tmp_path) == first
    make_classification_dataset(tmp_path, seed=0, num_train=1, num_val=1, image_size=32, background=False)
    assert sorted(p.name for p in (tmp_path / "train" / "cross").iterdir()) == ["00000.png"]


def test_a_foreign_class_folder_is_refused_before_writing(tmp_path):
    (tmp_path / "train" / "dog").mkdir(parents=True)
    with pytest.raises(SmnasError, match=r"train: holds class folder\(s\) \['dog'\]"):
        make_classification_dataset(tmp_path, num_train=1, num_val=1, image_size=32)
    assert not (tmp_path / "train" / "circle").exists()


@pytest.mark.parametrize("kwargs, match", [({"num_train": 0}, "num_train must be an integer >= 1"),
                                           ({"image_size": 8}, "image_size must be an integer >= 16"),
                                           ({"variant": "kitti"}, "unknown variant 'kitti'")])
def test_bad_dataset_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_classification_dataset(tmp_path, **kwargs)


def test_each_crop_shows_its_shape_and_background_none(monkeypatch):
    """What the crops are drawn from: one labelled shape, at least MIN_TARGET_VISIBLE of it visible
    after occluders and the frame's edge (an occluder that covers more is moved or dropped)."""
    drawn = []
    real = scenes._draw_items
    monkeypatch.setattr(scenes, "_draw_items", lambda rng, img, items: drawn.append(real(rng, img, items)) or drawn[-1])
    for label in class_names():
        for i in range(15):
            render_crop(0, "coco", "train", label, i, 48)
            labelled = [inst for inst in drawn[-1] if inst.cls >= 0]  # the last drawing is the crop's
            if label == "background":
                assert labelled == []
            else:
                assert [inst.kind for inst in labelled] == [label]
                assert labelled[0].visibility >= MIN_TARGET_VISIBLE
    assert len(drawn) > 7 * 15  # some occluders were redrawn: the rule above was exercised
    with pytest.raises(ValueError, match="unknown class 'dog'"):
        render_crop(0, "coco", "train", "dog", 0, 48)


# ---------------------------------------------------------------- reading ImageFolders

def test_missing_folder(tmp_path):
    with pytest.raises(DataFormatError, match=f"{tmp_path / 'nope'}: no such folder"):
        load_image_folder(tmp_path / "nope")


def test_folder_without_class_subfolders(tiny_cls, tmp_path):
    (tmp_path / "a.png").write_bytes((tiny_cls / "train/star/00000.png").read_bytes())
    with pytest.raises(DataFormatError, match=rf"{tmp_path}: no class sub-folders \(found 1 file\(s\) directly"):
        load_image_folder(tmp_path)


def test_class_folder_without_images(tiny_cls, tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "0.png").write_bytes((tiny_cls / "train/star/00000.png").read_bytes())
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "notes.txt").write_text("no image here")
    with pytest.raises(DataFormatError, match=f"{tmp_path / 'dog'}: class folder holds no image"):
        load_image_folder(tmp_path)


def test_train_and_val_must_have_the_same_classes(tiny_cls, tmp_path):
    for split, classes in (("train", ("a", "b")), ("val", ("b",))):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            (tmp_path / split / c / "0.png").write_bytes((tiny_cls / "train/star/00000.png").read_bytes())
    with pytest.raises(DataFormatError, match=r"only in train: \['a'\], only in val: \[\]"):
        load_image_folders(tmp_path)


def test_unreadable_image_names_the_file(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "0.png").write_bytes(b"not a png")
    dataset = load_image_folder(tmp_path)
    with pytest.raises(DataFormatError, match=f"{tmp_path / 'cat' / '0.png'}: cannot read image"):
        dataset[0]


# ---------------------------------------------------------------- identity and config

@pytest.mark.parametrize("args, key", [(("resnet18", 0.25), "resnet18@0.25"), (("resnet50", 1.0), "resnet50"),
                                       (("resnet18", 0.2500000001), "resnet18@0.25"),
                                       (("basicblock_16_1-21-21-12", 1.0), "basicblock_16_1-21-21-12"),
                                       (("resnet18", 0.25, "gnws"), "resnet18@0.25+gnws"),
                                       (("mobilenetv2", 0.25), "mobilenetv2@0.25")])
def test_backbone_key(args, key):
    assert backbone_key(*args) == key
    name, width, norm = parse_backbone_key(key)
    assert backbone_key(name, width, norm) == key and name == args[0]


@pytest.mark.parametrize("args, key", [(("basicblock_16_11-21-21-21", 1.0), "resnet18@0.25"),  # stage two's start
                                       (("resnet18", 0.3), "resnet18@0.25"),  # 0.3 x 64 rounds to 16 too
                                       (("bottleneck_24_111-2111-211111-211", 1.0, "gnws"), "resnet50@0.375+gnws"),
                                       (("basicblock_64_11-21-21-21_0-1-0-0", 1.0), "basicblock_64_11-21-21-21_0-1-0-0")])
def test_one_architecture_has_one_backbone_key(args, key):
    """A backbone built alike under two names is pretrained once: the key is the named form."""
    assert backbone_key(*args) == key
    name, width, norm = parse_backbone_key(key)
    a, b = build_backbone(args[0], args[1]), build_backbone(name, width)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


def test_parse_backbone_key_refuses_non_canonical_keys():
    with pytest.raises(SpecError, match=r"'resnet18@0.250' is not canonical; expected 'resnet18@0.25'"):
        parse_backbone_key("resnet18@0.250")
    with pytest.raises(SpecError, match="width 'x' is not a number"):
        parse_backbone_key("resnet18@x")


@pytest.mark.parametrize("args, match", [(("resnet19", 1.0), "unknown backbone 'resnet19'"),
                                         (("basicblock_16_1-21-21-12", 0.5), "width applies to named"),
                                         (("resnet18", 0.0), "width must be > 0"),
                                         (("resnet18", 1.0, "ln"), "norm 'ln'")])
def test_bad_backbone_key(args, match):
    with pytest.raises(SpecError, match=match):
        backbone_key(*args)


def test_pretrain_config_from_a_flat_dict():
    cfg = PretrainConfig.from_dict({"epochs": 3, "lr": 0.5, "schedule": "cosine", "image_size": 32,
                                    "crop_scale": [0.5, 1]})
    assert (cfg.optim.epochs, cfg.optim.lr, cfg.optim.milestones, cfg.optim.grad_clip) == (3, 0.5, (), None)
    assert cfg.optim.weight_decay == 1e-4 and cfg.image_size == 32 and cfg.crop_scale == (0.5, 1.0)
    assert PretrainConfig.from_dict({}).optim.milestones == (30, 60)  # torchvision's ImageNet recipe
    with pytest.raises(SmnasError, match=r"cfg: unknown key\(s\) \['lr_max'\]"):
        PretrainConfig.from_dict({"lr_max": 1.0}, "cfg")
    with pytest.raises(SmnasError, match=r"cfg: TrainConfig.milestones must increase strictly within 1..9"):
        PretrainConfig.from_dict({"epochs": 10}, "cfg")  # the recipe's (30, 60) do not fit


def test_evaluate_classifier_top1_top5():
    logits = torch.tensor([[9.0, 1, 2, 3, 4, 5, 6],    # label 0: first
                           [9.0, 8, 0, 0, 0, 0, 0],    # label 1: second
                           [6.0, 5, 0, 4, 3, 2, 1],    # label 2: last
                           [0.0, 0, 0, 1, 0, 0, 0]])   # label 3: first
    data = [(torch.full((3, 2, 2), float(i)), i) for i in range(4)]

    class Lookup(torch.nn.Module):
        def forward(self, x):
            return logits[x[:, 0, 0, 0].long()]

    assert evaluate_classifier(Lookup(), data, batch_size=3) == {"top1": 0.5, "top5": 0.75, "images": 4}


# ---------------------------------------------------------------- pretraining

def test_pretrained_weights_are_the_backbones_state_dict(pretrained):
    path, metrics = pretrained
    state = torch.load(path, weights_only=True)
    own = build_backbone("resnet18", 0.125).state_dict()
    assert list(state) == list(own) and all(state[k].shape == own[k].shape for k in own)
    assert metrics["backbone"] == "resnet18@0.125" and metrics["status"] == "ok"
    assert (metrics["epochs"], len(metrics["history"]), metrics["train_images"], metrics["val_images"]) == (2, 2, 14, 7)
    assert metrics["classes"] == sorted(class_names()) and metrics["world_size"] == 1
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 1
    assert len(metrics["spans"]) == 2 and all(a < b for a, b in metrics["spans"])  # one per epoch, for bench/workflow.py
    assert json.loads((path.parent / "work" / "metrics.json").read_text()) == metrics


def test_an_encoding_pretrains_too(tiny_cls, tmp_path):
    cfg = PretrainConfig(optim=TrainConfig(epochs=1, batch_size=7, lr=0.01, warmup_iters=0), image_size=32)
    metrics = pretrain_backbone("basicblock_8_1-2-2-2", 1.0, tiny_cls, tmp_path / "w.pt", tmp_path / "work", cfg,
                                out_metrics=tmp_path / "m.json", progress=False)
    assert metrics["backbone"] == "basicblock_8_1-2-2-2"
    assert json.loads((tmp_path / "m.json").read_text())["top1"] == metrics["top1"]
    load_backbone_weights(build_backbone("basicblock_8_1-2-2-2"), tmp_path / "w.pt")


def test_a_mobilenet_pretrains_and_loads_back(tiny_cls, tmp_path):
    cfg = PretrainConfig(optim=TrainConfig(epochs=1, batch_size=7, lr=0.01, warmup_iters=0), image_size=32)
    pretrain_backbone("mobilenetv2", 0.25, tiny_cls, tmp_path / "w.pt", tmp_path / "work", cfg, progress=False)
    own = build_backbone("mobilenetv2", 0.25).state_dict()
    assert list(torch.load(tmp_path / "w.pt", weights_only=True)) == list(own)
    load_backbone_weights(build_backbone("mobilenetv2", 0.25), tmp_path / "w.pt")


class _Stop(Exception):
    pass


def test_an_interrupted_pretraining_resumes_to_the_same_weights(tiny_cls, pretrained, tmp_path, monkeypatch):
    real_train = pretrain_mod.train

    def stop_after_epoch_1(*args, **kwargs):
        def stop(epoch, _means):
            if epoch == 1:
                raise _Stop
        return real_train(*args, **kwargs, on_epoch_end=stop)

    monkeypatch.setattr(pretrain_mod, "train", stop_after_epoch_1)
    with pytest.raises(_Stop):
        pretrain_backbone("resnet18", 0.125, tiny_cls, tmp_path / "w.pt", tmp_path / "work", CFG, progress=False)
    assert not (tmp_path / "w.pt").exists()
    epochs_run = []
    monkeypatch.setattr(pretrain_mod, "train", lambda *args, **kwargs: real_train(
        *args, **kwargs, on_epoch_end=lambda epoch, _means: epochs_run.append(epoch)))
    torch.manual_seed(999)  # a new process: other global RNG state before resuming
    metrics = pretrain_backbone("resnet18", 0.125, tiny_cls, tmp_path / "w.pt", tmp_path / "work", CFG,
                                progress=False)
    assert epochs_run == [2]  # resumed, not restarted
    full, resumed = torch.load(pretrained[0], weights_only=True), torch.load(tmp_path / "w.pt", weights_only=True)
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert metrics["history"] == pretrained[1]["history"] and metrics["top1"] == pretrained[1]["top1"]


def test_a_bn_detector_starts_from_the_pretrained_tensors(pretrained):
    path, _ = pretrained
    state = torch.load(path, weights_only=True)
    torch.manual_seed(CFG.optim.seed)
    initial = build_backbone("resnet18", 0.125).state_dict()  # what pretraining started from
    model = build_detector(parse_spec(BN_SPEC), DetectorOptions(num_classes=6, backbone_weights=path))
    body = model.backbone.body.state_dict()
    assert list(body) == list(state)
    assert all(torch.equal(body[k], state[k]) for k in state)  # BN running statistics included
    assert not torch.equal(state["conv1.weight"], initial["conv1.weight"])  # trained, not a fresh init
    assert not torch.equal(state["bn1.running_mean"], initial["bn1.running_mean"])


def test_a_pretrained_bn_backbone_keeps_its_statistics_in_training(pretrained):
    path, _ = pretrained
    frozen = build_detector(parse_spec(BN_SPEC), DetectorOptions(num_classes=6, backbone_weights=path)).train()
    batch = build_detector(parse_spec(BN_SPEC), DetectorOptions(num_classes=6, backbone_weights=path,
                                                                freeze_bn_stats=False)).train()
    scratch = build_detector(parse_spec(BN_SPEC), DetectorOptions(num_classes=6)).train()
    bns = [[m for m in model.backbone.body.modules() if isinstance(m, torch.nn.BatchNorm2d)]
           for model in (frozen, batch, scratch)]
    assert len(bns[0]) == 20 and all(isinstance(m, FrozenStatsBatchNorm2d) and not m.training for m in bns[0])
    assert not any(isinstance(m, FrozenStatsBatchNorm2d) for m in bns[1] + bns[2])  # batch statistics
    assert all(m.training for m in bns[1] + bns[2])


def test_a_gnws_detector_refuses_bn_weights_naming_the_keys(pretrained):
    gnws = BN_SPEC.replace("+bn", "+gnws")
    with pytest.raises(SpecError, match=r"w.pt: weights hold 60 keys this backbone lacks, e.g. \['bn1.running_mean'"):
        build_detector(parse_spec(gnws), DetectorOptions(num_classes=6, backbone_weights=pretrained[0]))


def test_weights_of_another_backbone_are_refused_naming_the_keys(pretrained, tmp_path):
    with pytest.raises(SpecError, match=r"w.pt: weights lack 96 backbone keys, e.g. \['layer1.2.conv1.weight'"):
        build_detector(parse_spec(BN_SPEC.replace("resnet18", "resnet34")),
                       DetectorOptions(num_classes=6, backbone_weights=pretrained[0]))
    with pytest.raises(SpecError, match=r"w.pt: conv1.weight has shape \(8, 3, 7, 7\), "
                                        r"the backbone needs \(16, 3, 7, 7\)"):
        build_detector(parse_spec(BN_SPEC.replace("@0.125", "@0.25")),
                       DetectorOptions(num_classes=6, backbone_weights=pretrained[0]))
    torch.save(build_backbone("resnet34", 0.125).state_dict(), tmp_path / "r34.pt")
    with pytest.raises(SpecError, match=r"r34.pt: weights hold 96 keys this backbone lacks"):
        build_detector(parse_spec(BN_SPEC), DetectorOptions(num_classes=6, backbone_weights=tmp_path / "r34.pt"))


# ---------------------------------------------------------------- failures leave nothing half-written

def test_bad_data_fails_before_anything_is_written(tmp_path):
    with pytest.raises(DataFormatError, match=f"{tmp_path / 'data' / 'train'}: no such folder"):
        pretrain_backbone("resnet18", 0.125, tmp_path / "data", tmp_path / "out" / "w.pt", tmp_path / "work", CFG)
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def test_a_failed_write_leaves_no_weights_and_no_metrics(tiny_cls, tmp_path, monkeypatch):
    real_save = torch.save

    def save_then_crash(obj, f, *args, **kwargs):
        if ".w.pt." in str(f):  # atomic_path's temporary file of the weights
            Path(f).write_bytes(b"half")
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_crash)
    with pytest.raises(OSError, match="disk full"):
        pretrain_backbone("resnet18", 0.125, tiny_cls, tmp_path / "w.pt", tmp_path / "work", CFG, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["last.pt", "run.json"]  # resumable, no metrics


def test_a_non_finite_loss_is_an_error_and_writes_no_weights(tiny_cls, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain_mod._ClassificationLoss, "forward",
                        lambda self, images, targets: {"loss_cls": torch.tensor(float("nan"), requires_grad=True)})
    with pytest.raises(SmnasError, match=r"pretraining resnet18@0.125 failed: non-finite loss at epoch 1 step 1: "
                                         r"loss_cls=nan \(checkpoint of epoch 0"):
        pretrain_backbone("resnet18", 0.125, tiny_cls, tmp_path / "w.pt", tmp_path / "work", CFG, progress=False)
    assert not (tmp_path / "w.pt").exists() and not (tmp_path / "work" / "metrics.json").exists()


# ---------------------------------------------------------------- command line

@pytest.mark.parametrize("command", ["make-classification", "pretrain"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0 and f"usage: smnas {command}" in capsys.readouterr().out


def test_cli_writes_the_dataset_then_pretrains(tmp_path, capsys):
    assert main(["make-classification", str(tmp_path / "d"), "--num-train", "1", "--num-val", "1", "--size", "32",
                 "--no-background", "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "d" / "val").iterdir()) == sorted(class_names(background=False))
    capsys.readouterr()
    args = ["pretrain", "resnet18", "--width", "0.125", "--data", str(tmp_path / "d"), "--out-weights",
            str(tmp_path / "w.pt"), "--workdir", str(tmp_path / "work"), "--epochs", "1", "--batch-size", "3",
            "--lr", "0.01", "--schedule", "cosine", "--image-size", "32", "--no-augment"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["backbone"] == "resnet18@0.125" and printed["train_images"] == 6
    assert json.loads((tmp_path / "work" / "metrics.json").read_text())["train"]["schedule"] == "cosine"
    assert main([*args[:4], "--data", str(tmp_path / "none"), *args[6:]]) == 2
    assert f"{tmp_path / 'none' / 'train'}: no such folder" in capsys.readouterr().err
