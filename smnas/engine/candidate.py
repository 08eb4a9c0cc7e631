"""One candidate architecture, in the workflow's three steps: train, time, evaluate.

    train_candidate(spec, data, cfg, opts, "cand/")      # cand/model.pt, cand/train.json
    time_candidate(spec, opts, "cand/", data)            # cand/latency.json
    evaluate_trained(spec, data, opts, "cand/")          # cand/metrics.json (the table row)

``evaluate_candidate`` runs all three (``smnas train``). A candidate whose training fails (a
non-finite loss, out of memory) is recorded with ``status: failed`` and the reason; the later
steps pass that on without work, so a search generation always completes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from smnas.data.coco import load_coco
from smnas.data.dataset import DetectionDataset
from smnas.engine.cost import detector_cost
from smnas.engine.device_lock import DeviceLock
from smnas.engine.distributed import dist_env
from smnas.engine.inference import predict
from smnas.engine.measure import measure_latency
from smnas.engine.train import TrainConfig, train
from smnas.evaluation import coco_evaluate, voc_map50, write_detections
from smnas.io import atomic_path, atomic_write_json
from smnas.models.build import DetectorOptions, build_detector
from smnas.models.spec import DetectorSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataPaths:
    """Where the train and val splits' COCO JSON and images are."""

    train_json: str
    train_images: str
    val_json: str
    val_images: str

    @classmethod
    def coco_layout(cls, root: str | Path) -> "DataPaths":
        """``root/annotations/instances_{train,val}.json`` with images in ``root/{train,val}``."""
        root = Path(root)
        return cls(str(root / "annotations/instances_train.json"), str(root / "train"),
                   str(root / "annotations/instances_val.json"), str(root / "val"))


def _is_out_of_memory(err: BaseException) -> bool:
    # A Python MemoryError is out of memory whatever its text (often none); torch raises CPU
    # allocation failures as RuntimeError("... DefaultCPUAllocator: can't allocate memory ...").
    text = str(err)
    return (isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in text
            or "can't allocate memory" in text)


def train_candidate(spec: DetectorSpec, data: DataPaths, cfg: TrainConfig, opts: DetectorOptions,
                    workdir: str | Path, device: str = "cpu", progress: bool | None = None,
                    scale_jitter: tuple[float, float] | None = None,
                    init_state: str | Path | None = None) -> dict[str, Any]:
    """Train ``spec``; write ``model.pt`` and ``train.json`` (status, reason, seconds, history).

    Resumes from ``workdir/train/last.pt`` when an earlier run was interrupted. ``init_state``:
    a whole detector's state dict to start from (an SP-NAS child's inherited weights, written by
    :func:`smnas.models.morph.inherit_detector`); every key must fit.
    """
    workdir = Path(workdir)
    coco = load_coco(data.train_json, data.train_images)
    train_set = DetectionDataset(coco, data.train_images, hflip_prob=0.5, scale_jitter=scale_jitter)
    if opts.num_classes != train_set.num_classes:
        raise ValueError(f"DetectorOptions.num_classes={opts.num_classes} but {data.train_json} has {train_set.num_classes} categories")
    torch.manual_seed(cfg.seed)  # the same initial weights for the same spec and seed
    model = build_detector(spec, opts)
    if init_state is not None:
        _load_init_state(model, spec, init_state)
    # A checkpoint of another run in this folder (another arch, settings, data or initial weights)
    # is not resumed; the initial weights' digest covers the pretrained or inherited ones.
    identity = {"arch": str(spec), "detector": {k: v for k, v in asdict(opts).items() if k != "backbone_weights"},
                "train_json": str(data.train_json), "annotations": _sha256(data.train_json),
                "scale_jitter": list(scale_jitter) if scale_jitter else None}
    try:
        result = train(model, train_set, cfg, workdir / "train", device=device, progress=progress,
                       lock=DeviceLock(device), identity=identity).to_dict()
    except (RuntimeError, MemoryError) as err:
        if not _is_out_of_memory(err):
            raise
        log.error("%s: out of memory: %s", spec, err)
        first_line = (str(err).splitlines() or [type(err).__name__])[0]  # a bare MemoryError has no text
        result = {"status": "failed", "reason": f"out of memory: {first_line}", "epochs": 0,
                  "seconds": 0.0, "images_per_second": 0.0, "history": []}
    # as plain JSON types (milestones: a list), so that the returned dict equals train.json
    result.update(arch=str(spec), num_classes=opts.num_classes, train=json.loads(json.dumps(asdict(cfg))))
    if dist_env().is_main:  # under torchrun every process trained the same weights; one writes them
        with atomic_path(workdir / "model.pt") as tmp:
            torch.save(model.state_dict(), tmp)
        atomic_write_json(workdir / "train.json", result, indent=2)
    return result


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _load_init_state(model: torch.nn.Module, spec: DetectorSpec, path: str | Path) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    bad = sorted(set(own) ^ set(state)) or [k for k in own if own[k].shape != state[k].shape]
    if bad:
        raise ValueError(f"{path}: initial weights do not fit {spec}: e.g. {bad[:3]} (written for another architecture?)")
    model.load_state_dict(state)


def load_model(spec: DetectorSpec, opts: DetectorOptions, workdir: str | Path, device: str = "cpu") -> torch.nn.Module:
    """The trained ``spec`` of ``workdir/model.pt``, built with ``opts``, in eval mode on ``device``."""
    model = build_detector(spec, opts)
    model.load_state_dict(torch.load(Path(workdir) / "model.pt", map_location=device, weights_only=True))
    return model.to(device).eval()


def _train_status(workdir: Path) -> dict[str, Any]:
    return json.loads((workdir / "train.json").read_text())


def latency_images(data: DataPaths, n: int) -> list[torch.Tensor]:
    """The first ``n`` validation images in the dataset's order (by image id), for timing.

    Args:
        data: the split paths; only ``val_json`` and ``val_images`` are read.
        n: how many images; fewer come back when the split has fewer.

    Returns:
        ``min(n, len(val))`` tensors ``Tensor[3, H, W]`` float in [0, 1] at the files' own sizes
        (the detector's transform resizes them to its input size, as at evaluation).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    # Only n files are read: DetectionDataset names a missing one; checking all is evaluation's job.
    dataset = DetectionDataset(load_coco(data.val_json, data.val_images, check_images=False), data.val_images)
    return [dataset[i][0] for i in range(min(n, len(dataset)))]


def time_candidate(spec: DetectorSpec, opts: DetectorOptions, workdir: str | Path, data: DataPaths,
                   num_images: int = 20, device: str = "cpu", runs: int = 1,
                   threads: int | None = 1) -> dict[str, Any]:
    """Batch-1 latency of the trained model over the first validation images; write ``latency.json``.

    The SM-NAS paper (Yao et al., AAAI 2020) averages inference time over test images: a
    two-stage detector's work depends on the image (proposals surviving NMS), so one noise
    image would misrepresent it.

    Args:
        spec, opts: the detector, built as it was trained.
        workdir: holds ``train.json`` and ``model.pt``; ``latency.json`` is written there.
        data: the splits; the first ``num_images`` of the val split are timed.
        num_images: how many val images (fewer when the split has fewer).
        device: where to time.
        runs: passes over the images (each image timed once per pass).
        threads: CPU intra-op threads while timing.

    Returns:
        What ``latency.json`` holds: ``latency_ms`` (median per-image forward; None when training
        failed), ``latency_mean_ms``, ``latency_runs``, ``latency_images``, ``device``,
        ``memory_format`` (the weights' layout while timed) and ``spans`` (Unix times of the
        measured window).
    """
    workdir = Path(workdir)
    if _train_status(workdir)["status"] != "ok":
        out: dict[str, Any] = {"latency_ms": None, "device": ""}
    else:
        model = load_model(spec, opts, workdir, device)
        images = latency_images(data, num_images)
        with DeviceLock(device).exclusive():  # no other smnas job computes on the device meanwhile
            start = time.time()
            lat = measure_latency(model, images, device=device, runs=runs, threads=threads)
            span = [start, time.time()]  # Unix time, for bench/workflow.py
        out = {"latency_ms": lat.median_ms, "latency_mean_ms": lat.mean_ms, "latency_runs": lat.runs,
               "latency_images": lat.images, "device": lat.device, "memory_format": lat.memory_format,
               "spans": [span]}
    atomic_write_json(workdir / "latency.json", out, indent=2)
    return out


def time_untrained(spec: DetectorSpec, opts: DetectorOptions, images: list[torch.Tensor], device: str = "cpu",
                   runs: int = 1, threads: int | None = 1) -> float:
    """Batch-1 latency (median ms) of ``spec`` before it trains: built afresh (weights from seed 0),
    timed as :func:`time_candidate` times a trained one, the device lock held.

    Stage one's screen times each child so, and predicts only its mAP. An untrained model's time
    ranks the trained ones nearly as well as a second trained timing does: on the 68 stage-one
    candidates of one bench/evidence.py run, Kendall tau +0.87 for one untrained measurement
    against the trained medians, log(untrained / trained) mean -0.03, sd 0.10 (the heads' work
    depends on their scores; GA-RPN Cascade4 differs most) (bench/latency_noise.py --untrained).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_detector(spec, opts).eval()
    with DeviceLock(device).exclusive():
        return measure_latency(model, images, device=device, runs=runs, threads=threads).median_ms


def evaluate_trained(spec: DetectorSpec, data: DataPaths, opts: DetectorOptions, workdir: str | Path,
                     device: str = "cpu", progress: bool | None = None, voc_metric: bool = False) -> dict[str, Any]:
    """COCO evaluation of the trained model on the val split, merged with training and timing.

    ``voc_metric`` adds ``voc_map50``, Pascal VOC's mAP at IoU 0.5 (for VOC transfer).

    Returns (and writes as ``metrics.json``) the candidate's table row: arch, status, reason,
    map, map50, map75, maps, mapm, mapl, latency_ms, device, gmacs, params, backbone_gmacs,
    backbone_params, train_seconds, epochs.
    """
    workdir = Path(workdir)
    trained = _train_status(workdir)
    row: dict[str, Any] = {"arch": str(spec), "status": trained["status"], "reason": trained["reason"],
                           "train_seconds": trained["seconds"], "epochs": trained["epochs"]}
    lock, start = DeviceLock(device), time.time()
    with lock.shared():
        row.update({k: v for k, v in detector_cost(spec, opts).items() if k != "spec"})
    latency = workdir / "latency.json"
    if latency.exists():
        row.update({k: v for k, v in json.loads(latency.read_text()).items() if k in ("latency_ms", "device")})
    if trained["status"] == "ok":
        val_coco = load_coco(data.val_json, data.val_images)
        dets = predict(load_model(spec, opts, workdir, device), DetectionDataset(val_coco, data.val_images),
                       device=device, progress=progress, lock=lock)
        write_detections(dets, workdir / "detections.json")
        with lock.shared():
            stats = coco_evaluate(val_coco, dets)
            if voc_metric:
                row["voc_map50"] = voc_map50(val_coco, dets)["mAP50"]
        row.update(map=stats["AP"], map50=stats["AP50"], map75=stats["AP75"],
                   maps=stats["APs"], mapm=stats["APm"], mapl=stats["APl"])
    row["spans"] = [[start, time.time()]]  # Unix time, for bench/workflow.py
    atomic_write_json(workdir / "metrics.json", row, indent=2)
    log.info("%s: %s map=%s latency=%s", spec, row["status"], row.get("map"), row.get("latency_ms"))
    return row


def evaluate_candidate(spec: DetectorSpec, data: DataPaths, train_cfg: TrainConfig, opts: DetectorOptions,
                       workdir: str | Path, device: str = "cpu", latency_runs: int = 1,
                       progress: bool | None = None, latency_images: int = 20) -> dict[str, Any]:
    """Train, time and evaluate ``spec`` in ``workdir``; returns the metrics row.

    Latency is timed over the first ``latency_images`` val images of ``data``, ``latency_runs``
    passes (see :func:`time_candidate`).
    """
    train_candidate(spec, data, train_cfg, opts, workdir, device, progress)
    time_candidate(spec, opts, workdir, data, num_images=latency_images, device=device, runs=latency_runs)
    return evaluate_trained(spec, data, opts, workdir, device, progress)
