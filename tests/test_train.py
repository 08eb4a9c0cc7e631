"""The training loop: exact resume, non-finite loss handling, schedule."""
from __future__ import annotations


import pytest
import torch

from smnas.data.coco import load_coco
from smnas.data.dataset import DetectionDataset
from smnas.engine.train import CHECKPOINT, TrainConfig, lr_lambda, train
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


def test_resume_after_interruption_gives_identical_weights(tiny_coco, tmp_path):
    model_a, data = _setup(tiny_coco)
    res_a = train(model_a, data, CFG, tmp_path / "a", progress=False)
    assert res_a.status == "ok" and res_a.epochs == 3 and len(res_a.history) == 3

    def stop_after_first(epoch, _losses):
        if epoch == 1:
            raise _Interrupt

    model_b, _ = _setup(tiny_coco)
    with pytest.raises(_Interrupt):
        train(model_b, data, CFG, tmp_path / "b", progress=False, on_epoch_end=stop_after_first)
    assert torch.load(tmp_path / "b" / CHECKPOINT, weights_only=False)["epoch"] == 1
    # A fresh process would build a fresh model with other random weights: simulate that.
    torch.manual_seed(12345)
    model_c, _ = _setup(tiny_coco)
    for p in model_c.parameters():
        p.data.normal_()
    res_c = train(model_c, data, CFG, tmp_path / "b", progress=False)
    assert res_c.status == "ok" and res_c.history == res_a.history
    sa, sc = model_a.state_dict(), model_c.state_dict()
    assert sa.keys() == sc.keys()
    for k in sa:
        assert torch.equal(sa[k], sc[k]), k


def test_resume_differs_from_restart_without_checkpoint(tiny_coco, tmp_path):
    """Guard: the equality above is not trivially true (another seed gives other weights)."""
    model_a, data = _setup(tiny_coco)
    train(model_a, data, TrainConfig(epochs=1, batch_size=2, lr=0.01, warmup_iters=2, seed=3), tmp_path / "a", progress=False)
    model_b, _ = _setup(tiny_coco)
    train(model_b, data, TrainConfig(epochs=1, batch_size=2, lr=0.01, warmup_iters=2, seed=4), tmp_path / "b", progress=False)
    diffs = [not torch.equal(a, b) for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values())]
    assert any(diffs)


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
    assert torch.load(tmp_path / CHECKPOINT, weights_only=False)["epoch"] == 1


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
