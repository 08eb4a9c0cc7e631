"""The training loop: exact resume, non-finite loss handling, schedule."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from smnas.data.coco import load_coco
from smnas.data.dataset import DetectionDataset
from smnas.engine.train import CHECKPOINT, RUN_RECORD, TrainConfig, lr_lambda, run_identity, train
from smnas.models.build import DetectorOptions, build_detector
from smnas.models.spec import parse_spec

from conftest import TINY_SPEC

CFG = TrainConfig(epochs=3, batch_size=2, lr=0.01, warmup_iters=2, seed=3)


def _setup(paths):
    coco = load_coco(paths["coco_train_json"], paths["coco_train_images"])
    data = DetectionDataset(coco, paths["coco_train_images"], hflip_prob=0.5)
    torch.manual_seed(0)
    model = build_detector(parse_spec(TINY_SPEC), DetectorOptions(num_classes=data.num_classes, anchor_scale=4,
                                                                  rpn_post_nms_top_n=64, box_batch_size_per_image=32))
    return model, data


class _Interrupt(Exception):
    pass


def _interrupt_after(epochs: int, model, data, workdir) -> None:
    """Train with CFG until ``epochs`` epochs are checkpointed, then stop as a kill would."""
    def stop(epoch, _losses):
        if epoch == epochs:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(model, data, CFG, workdir, progress=False, on_epoch_end=stop)


def _fresh_process_model(paths):
    """The model a new process builds before resuming: the same initial weights (same code and
    seed), which is what lets it resume (run.json); it then takes every weight from last.pt."""
    model, _ = _setup(paths)
    return model


def _resumed(model, data, workdir) -> tuple[object, list[int]]:
    """Train to the end; the result and the epochs that ran (a restart would run epoch 1)."""
    epochs_run: list[int] = []
    res = train(model, data, CFG, workdir, progress=False, on_epoch_end=lambda epoch, _losses: epochs_run.append(epoch))
    return res, epochs_run


def _assert_same_weights(model_a, model_b) -> None:
    sa, sb = model_a.state_dict(), model_b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_resume_after_interruption_gives_identical_weights(tiny_coco, tmp_path):
    model_a, data = _setup(tiny_coco)
    res_a = train(model_a, data, CFG, tmp_path / "a", progress=False)
    assert res_a.status == "ok" and res_a.epochs == 3 and len(res_a.history) == 3

    model_b, _ = _setup(tiny_coco)
    _interrupt_after(1, model_b, data, tmp_path / "b")
    # plain weights_only=True, no allow-list: the checkpoint holds tensors and plain values only
    assert torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)["epoch"] == 1
    model_c = _fresh_process_model(tiny_coco)
    res_c, epochs_run = _resumed(model_c, data, tmp_path / "b")
    assert res_c.status == "ok" and res_c.history == res_a.history and epochs_run == [2, 3]
    _assert_same_weights(model_a, model_c)


def test_resume_takes_its_state_from_the_checkpoint(tiny_coco, tmp_path):
    """The equality above is not a restart that happens to match: edit the checkpoint and the
    resumed run follows the edit, from the epoch after the checkpoint's."""
    model_a, data = _setup(tiny_coco)
    res_a = train(model_a, data, CFG, tmp_path / "a", progress=False)
    model_b, _ = _setup(tiny_coco)
    _interrupt_after(1, model_b, data, tmp_path / "b")
    state = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)
    name = next(k for k, v in state["model"].items() if v.is_floating_point() and v.numel() > 1)
    state["model"][name][0] += 0.5
    state["history"][0] = {**state["history"][0], "loss": 123.0}
    torch.save(state, tmp_path / "b" / CHECKPOINT)

    model_c, epochs_run = _fresh_process_model(tiny_coco), []
    res_c = train(model_c, data, CFG, tmp_path / "b", progress=False,
                  on_epoch_end=lambda epoch, _losses: epochs_run.append(epoch))
    assert res_c.status == "ok" and epochs_run == [2, 3]  # a restart would run epoch 1 again
    assert res_c.history[0] == {**res_a.history[0], "loss": 123.0}  # the checkpoint's, not recomputed
    assert not torch.equal(model_c.state_dict()[name], model_a.state_dict()[name])
    assert res_c.history[1:] != res_a.history[1:]  # training went on from the edited weights


def test_checkpoint_with_the_older_numpy_rng_form_still_resumes(tiny_coco, tmp_path):
    """Checkpoints written before the RNG state went in as plain values hold numpy's state as
    get_state() returns it, a tuple with an ndarray: runs interrupted then must still resume."""
    model_a, data = _setup(tiny_coco)
    res_a = train(model_a, data, CFG, tmp_path / "a", progress=False)
    model_b, _ = _setup(tiny_coco)
    _interrupt_after(1, model_b, data, tmp_path / "b")
    state = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)
    new = state["rng"]["numpy"]
    state["rng"]["numpy"] = (new["bit_generator"], np.asarray(new["state"]["key"], dtype=np.uint32),
                             new["state"]["pos"], new["has_gauss"], new["gauss"])
    torch.save(state, tmp_path / "b" / CHECKPOINT)
    with pytest.raises(pickle.UnpicklingError):  # what load_checkpoint's allow-list is for
        torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)

    model_c = _fresh_process_model(tiny_coco)
    res_c, epochs_run = _resumed(model_c, data, tmp_path / "b")
    assert res_c.status == "ok" and res_c.history == res_a.history and epochs_run == [2, 3]
    _assert_same_weights(model_a, model_c)


@pytest.mark.parametrize("change", ["lr", "initial weights", "identity", "no run.json"])
def test_a_checkpoint_of_another_run_is_not_resumed(tiny_coco, tmp_path, change):
    """After a config change (lr), new pretrained weights or a model the code builds differently
    (initial weights), other data (the caller's identity), or from before run.json existed, a
    rerun in the same folder starts afresh: a resume would finish the old run and report it as
    the new one. The new run then resumes as usual."""
    model_a, data = _setup(tiny_coco)
    _interrupt_after(1, model_a, data, tmp_path)
    cfg = TrainConfig(**{**CFG.__dict__, "lr": 0.02}) if change == "lr" else CFG
    identity = {"annotations": "another file"} if change == "identity" else None
    if change == "no run.json":
        (tmp_path / RUN_RECORD).unlink()

    def model():
        m, _ = _setup(tiny_coco)
        if change == "initial weights":
            next(m.parameters()).data[0] += 1.0
        return m

    def run(m):
        epochs_run: list[int] = []
        res = train(m, data, cfg, tmp_path, progress=False, identity=identity,
                    on_epoch_end=lambda epoch, _losses: epochs_run.append(epoch))
        return res, epochs_run

    model_b = model()
    expected = run_identity(model_b, cfg, identity)
    res, epochs_run = run(model_b)
    assert res.status == "ok" and epochs_run == [1, 2, 3]
    assert json.loads((tmp_path / RUN_RECORD).read_text()) == expected
    res, epochs_run = run(model())  # the same run again: resumed, nothing left to train
    assert res.status == "ok" and epochs_run == [] and len(res.history) == 3


class _RunsCode:
    """Pickles as a call to open(marker, "w"): what loading a checkpoint in full would run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_a_checkpoint_that_names_code_is_refused_not_run(tiny_coco, tmp_path):
    model, data = _setup(tiny_coco)
    marker = tmp_path / "ran"
    (tmp_path / "w").mkdir()
    torch.save({"model": model.state_dict(), "epoch": 1, "payload": _RunsCode(marker)}, tmp_path / "w" / CHECKPOINT)
    (tmp_path / "w" / RUN_RECORD).write_text(json.dumps(run_identity(model, CFG)))  # so that it is loaded
    with pytest.raises(pickle.UnpicklingError, match="open"):
        train(model, data, CFG, tmp_path / "w", progress=False)
    assert not marker.exists()


class _NaNAfter(torch.nn.Module):
    """A detector whose loss becomes NaN at the n-th call."""

    def __init__(self, inner, n):
        super().__init__()
        self.inner, self.n, self.calls = inner, n, 0

    def forward(self, images, targets=None):
        losses = self.inner(images, targets)
        self.calls += 1
        if self.calls >= self.n:
            losses["loss_classifier"] = losses["loss_classifier"] * float("nan")
        return losses


def test_non_finite_loss_is_a_recorded_failure(tiny_coco, tmp_path):
    model, data = _setup(tiny_coco)
    result = train(_NaNAfter(model, 5), data, CFG, tmp_path, progress=False)
    assert result.status == "failed"
    assert "non-finite loss at epoch 2 step 2" in result.reason and "loss_classifier=nan" in result.reason
    assert result.epochs == 1  # epoch 1 finished and was checkpointed
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["epoch"] == 1


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(lr=0.04, lr_min=1e-4, warmup_iters=10, warmup_factor=0.001)
    f = lr_lambda(cfg, total_iters=110)
    assert f(0) == pytest.approx(0.001)
    assert f(5) == pytest.approx(0.001 * 0.5 + 0.5)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(1e-4 / 0.04 + (1 - 1e-4 / 0.04) * 0.5)
    assert f(110) == pytest.approx(1e-4 / 0.04)
    assert all(f(i) >= f(i + 1) for i in range(10, 110))


def test_train_config_rejects_bad_values():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="lr_min"):
        TrainConfig(lr=0.01, lr_min=0.1)
