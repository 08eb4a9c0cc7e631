"""One candidate's steps: latency over the first val images, and a failed training passed on
through timing and evaluation to an unranked table row."""
from __future__ import annotations

import fcntl
import json
import math

import pytest
import torch

from smnas.data.coco import load_coco
from smnas.data.dataset import DetectionDataset
from smnas.engine import candidate
from smnas.engine.candidate import (DataPaths, evaluate_trained, latency_images, time_candidate,
                                    time_untrained, train_candidate)
from smnas.engine.device_lock import lock_path
from smnas.engine.train import TrainConfig, TrainResult
from smnas.models.build import DetectorOptions, build_detector
from smnas.models.spec import parse_spec
from smnas.search.tables import make_table, rank_population

from conftest import FIXTURES, TINY_SPEC

COCO = FIXTURES / "coco"
# The fixture's one split serves as train and val: 3 images (64x48, 64x48, 48x64), 3 classes.
DATA = DataPaths(str(COCO / "instances_tiny.json"), str(COCO / "images"),
                 str(COCO / "instances_tiny.json"), str(COCO / "images"))
OPTS = DetectorOptions(num_classes=3, anchor_scale=4, rpn_post_nms_top_n=64, box_batch_size_per_image=32)
CFG = TrainConfig(epochs=1, batch_size=2, lr=0.01, warmup_iters=1, seed=0)
# What evaluate_trained writes for a candidate whose training failed: no map columns.
FAILED_ROW_KEYS = {"arch", "status", "reason", "train_seconds", "epochs", "backbone_params", "backbone_gmacs",
                   "params", "gmacs", "latency_ms", "device", "spans"}


@pytest.fixture(autouse=True)
def private_lock_dir(tmp_path, monkeypatch):
    """Device locks of these tests' own: never wait on (or hold back) other smnas jobs here."""
    directory = tmp_path / "locks"
    monkeypatch.setenv("SMNAS_LOCK_DIR", str(directory))
    return directory


def test_latency_images_are_the_first_val_images_in_id_order():
    dataset = DetectionDataset(load_coco(DATA.val_json, DATA.val_images), DATA.val_images)
    two = latency_images(DATA, 2)
    assert [tuple(x.shape) for x in two] == [(3, 48, 64), (3, 48, 64)]
    assert all(torch.equal(x, dataset[i][0]) for i, x in enumerate(two))
    assert not torch.equal(two[0], two[1])
    assert [tuple(x.shape) for x in latency_images(DATA, 10)] == [(3, 48, 64), (3, 48, 64), (3, 64, 48)]
    with pytest.raises(ValueError, match="n must be >= 1"):
        latency_images(DATA, 0)


def test_time_untrained_times_a_fresh_model_with_the_device_alone(monkeypatch):
    """Stage one's screen times children before they train: weights from seed 0 whatever the
    global generator holds (left as it was), the lock held, one thread."""
    spec = parse_spec(TINY_SPEC)
    torch.manual_seed(0)
    expected = build_detector(spec, OPTS).state_dict()
    seen = []
    real = candidate.measure_latency

    def recording(model, images, **kwargs):
        with open(lock_path("cpu"), "ab") as f, pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        seen.append((model.state_dict(), kwargs))
        return real(model, images, **kwargs)

    monkeypatch.setattr(candidate, "measure_latency", recording)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    ms = time_untrained(spec, OPTS, latency_images(DATA, 2), runs=2, threads=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    (weights, kwargs), = seen
    assert kwargs == {"device": "cpu", "runs": 2, "threads": 1}
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in expected)
    assert math.isfinite(ms) and ms > 0


def test_time_candidate_times_the_first_val_images_with_the_device_alone(tmp_path, monkeypatch):
    spec = parse_spec(TINY_SPEC)
    torch.manual_seed(0)
    torch.save(build_detector(spec, OPTS).state_dict(), tmp_path / "model.pt")
    (tmp_path / "train.json").write_text(json.dumps({"status": "ok"}))
    calls = []
    real = candidate.measure_latency

    def recording(model, images, **kwargs):
        # The measurement holds the device lock exclusive: a shared request must fail now.
        with open(lock_path("cpu"), "ab") as f, pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        calls.append((images, kwargs))
        return real(model, images, **kwargs)

    monkeypatch.setattr(candidate, "measure_latency", recording)
    out = time_candidate(spec, OPTS, tmp_path, DATA, num_images=2, runs=2, threads=1)
    (images, kwargs), = calls
    assert all(torch.equal(a, b) for a, b in zip(images, latency_images(DATA, 2))) and len(images) == 2
    assert kwargs == {"device": "cpu", "runs": 2, "threads": 1}
    assert json.loads((tmp_path / "latency.json").read_text()) == out
    assert set(out) == {"latency_ms", "latency_mean_ms", "latency_runs", "latency_images", "device", "memory_format",
                        "spans"}
    assert out["memory_format"] == "channels_last"  # the CPU's layout
    assert (out["latency_images"], out["latency_runs"]) == (2, 2)
    assert out["latency_ms"] > 0 and out["latency_mean_ms"] > 0 and out["device"].startswith("cpu: ")
    (start, end), = out["spans"]
    assert start <= end
    with open(lock_path("cpu"), "ab") as f:  # released afterwards
        fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)


def _non_finite(*_args, **_kwargs):
    return TrainResult("failed", 0, 0.25, 8.0, "non-finite loss at epoch 1 step 2: loss_classifier=nan")


def _raises(err):
    def train(*_args, **_kwargs):
        raise err
    return train


@pytest.mark.parametrize("fake_train, reason", [
    (_non_finite, "non-finite loss at epoch 1 step 2: loss_classifier=nan"),
    (_raises(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")),
     "out of memory: CUDA out of memory. Tried to allocate 2.00 GiB"),
    (_raises(RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                          "memory: you tried to allocate 4503599627370496 bytes.")),
     "out of memory: [enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
     "you tried to allocate 4503599627370496 bytes."),
    (_raises(MemoryError()), "out of memory: MemoryError"),  # Python's own, without a message
], ids=["non-finite", "cuda-oom", "cpu-oom", "memory-error"])
def test_failed_training_is_recorded_passed_on_and_left_unranked(tmp_path, monkeypatch, fake_train, reason):
    spec = parse_spec(TINY_SPEC)
    monkeypatch.setattr(candidate, "train", fake_train)
    work = tmp_path / "cand"
    trained = train_candidate(spec, DATA, CFG, OPTS, work)
    assert (trained["status"], trained["reason"]) == ("failed", reason)
    assert json.loads((work / "train.json").read_text()) == trained

    # Timing does no work for it: the val data is never read (these paths do not exist).
    missing = DataPaths("x.json", "x", str(tmp_path / "no.json"), str(tmp_path / "no"))
    assert time_candidate(spec, OPTS, work, missing) == {"latency_ms": None, "device": ""}
    assert json.loads((work / "latency.json").read_text()) == {"latency_ms": None, "device": ""}

    row = evaluate_trained(spec, missing, OPTS, work)
    assert set(row) == FAILED_ROW_KEYS
    assert (row["status"], row["reason"], row["latency_ms"], row["device"]) == ("failed", reason, None, "")
    assert (row["epochs"], row["train_seconds"]) == (trained["epochs"], trained["seconds"])
    assert row["params"] > row["backbone_params"] > 0  # costs are known without a trained model
    assert json.loads((work / "metrics.json").read_text()) == row

    ok = {"arch": "ok-candidate", "status": "ok", "reason": "", "map": 0.3, "latency_ms": 10.0}
    ranked = rank_population(make_table([ok, row]), "latency_ms").set_index("arch")
    assert ranked.loc["ok-candidate", "front_rank"] == 0
    assert ranked.loc[str(spec), "front_rank"] == -1 and math.isnan(ranked.loc[str(spec), "crowding"])


def test_other_runtime_errors_are_raised_not_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(candidate, "train", _raises(RuntimeError("mat1 and mat2 shapes cannot be multiplied")))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        train_candidate(parse_spec(TINY_SPEC), DATA, CFG, OPTS, tmp_path)
    assert not (tmp_path / "train.json").exists() and not (tmp_path / "model.pt").exists()


def test_evaluate_candidate_passes_the_data_and_latency_settings_on(tmp_path, monkeypatch):
    calls = {}
    monkeypatch.setattr(candidate, "train_candidate", lambda *a, **k: calls.setdefault("train", (a, k)))
    monkeypatch.setattr(candidate, "time_candidate", lambda *a, **k: calls.setdefault("time", (a, k)))
    monkeypatch.setattr(candidate, "evaluate_trained", lambda *a, **k: {"row": (a, k)})
    spec = parse_spec(TINY_SPEC)
    row = candidate.evaluate_candidate(spec, DATA, CFG, OPTS, tmp_path, latency_runs=3, latency_images=7)
    args, kwargs = calls["time"]
    assert args == (spec, OPTS, tmp_path, DATA) and kwargs == {"num_images": 7, "device": "cpu", "runs": 3}
    assert row["row"][0][:2] == (spec, DATA)


def test_a_folder_whose_architecture_changed_does_not_resume_the_old_checkpoint(tmp_path):
    """results/final/front0/ gets another architecture when the front changes: its old last.pt
    must not be loaded into the new model (it would fail on every key), and a same-arch rerun
    still resumes."""
    cfg = TrainConfig(epochs=2, batch_size=2, lr=0.01, warmup_iters=1, seed=0)
    first = parse_spec(TINY_SPEC)
    train_candidate(first, DATA, cfg, OPTS, tmp_path, progress=False)
    assert (tmp_path / "train" / "last.pt").exists()
    other = parse_spec(TINY_SPEC.replace("fpn:P2-P4:c16", "fpn:P2-P4:c32"))  # every FPN tensor changes shape
    assert other != first
    result = train_candidate(other, DATA, cfg, OPTS, tmp_path, progress=False)
    assert result["status"] == "ok" and result["arch"] == str(other) and len(result["history"]) == 2
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    build_detector(other, OPTS).load_state_dict(state)  # the new architecture's weights
    assert json.loads((tmp_path / "train" / "run.json").read_text())["arch"] == str(other)
