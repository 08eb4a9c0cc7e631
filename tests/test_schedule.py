"""The step schedule of TrainConfig: warm-up ramp, drops at milestone epochs, validation."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from smnas.engine.train import CHECKPOINT, TrainConfig, lr_lambda, train

EXACT = {"rel": 1e-12, "abs": 0.0}


def test_step_schedule_warmup_then_drops_at_the_milestone_epochs():
    # 4 epochs of 10 iterations: warm-up over 10, x0.1 from iteration 20 (after epoch 2), again from 30.
    cfg = TrainConfig(epochs=4, lr=0.04, warmup_iters=10, warmup_factor=0.001, schedule="step",
                      milestones=(2, 3), gamma=0.1)
    f = lr_lambda(cfg, total_iters=40)
    assert f(0) == pytest.approx(0.001, **EXACT)
    assert f(5) == pytest.approx(0.001 * 0.5 + 0.5, **EXACT)
    assert f(9) == pytest.approx(0.001 * 0.1 + 0.9, **EXACT)
    assert f(10) == 1.0 and f(19) == 1.0
    assert f(20) == pytest.approx(0.1, **EXACT) and f(29) == pytest.approx(0.1, **EXACT)
    assert f(30) == pytest.approx(0.01, **EXACT) and f(39) == pytest.approx(0.01, **EXACT)


def test_paper_2x_schedule():
    # Detectron's 2x as the SM-NAS paper trains its final models: 24 epochs, x0.1 after 16 and 22.
    cfg = TrainConfig(epochs=24, lr=0.04, warmup_iters=500, warmup_factor=1 / 3, schedule="step",
                      milestones=(16, 22))
    f = lr_lambda(cfg, total_iters=24 * 1000)
    assert f(250) == pytest.approx(1 / 3 * 0.5 + 0.5, **EXACT)
    assert f(500) == 1.0 and f(15_999) == 1.0
    assert f(16_000) == pytest.approx(0.1, **EXACT) and f(21_999) == pytest.approx(0.1, **EXACT)
    assert f(22_000) == pytest.approx(0.01, **EXACT) and f(23_999) == pytest.approx(0.01, **EXACT)


def test_a_milestone_inside_the_warm_up_scales_the_ramp():
    cfg = TrainConfig(epochs=2, lr=0.1, warmup_iters=4, warmup_factor=0.0, schedule="step", milestones=(1,),
                      gamma=0.5)
    f = lr_lambda(cfg, total_iters=6)  # 3 iterations per epoch, the drop at iteration 3
    assert [f(i) for i in range(6)] == pytest.approx([0.0, 0.25, 0.5, 0.375, 0.5, 0.5], **EXACT)


def test_step_without_milestones_is_constant_after_warm_up():
    f = lr_lambda(TrainConfig(epochs=3, warmup_iters=2, warmup_factor=0.5, schedule="step"), total_iters=9)
    assert [f(i) for i in range(9)] == [0.5, 0.75] + [1.0] * 7


def test_cosine_is_still_the_default_and_unchanged():
    cfg = TrainConfig(lr=0.04, lr_min=1e-4, warmup_iters=10, warmup_factor=0.001)
    assert cfg.schedule == "cosine" and cfg.milestones == ()
    f, floor = lr_lambda(cfg, total_iters=110), 1e-4 / 0.04
    assert f(10) == 1.0
    assert f(35) == pytest.approx(floor + (1 - floor) * 0.5 * (1 + 2 ** -0.5), **EXACT)  # a quarter of the way
    assert f(110) == pytest.approx(floor, **EXACT)


class _Linear(nn.Module):
    """A one-weight model in train()'s convention."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, images, targets):
        return {"loss_sq": ((self.w * torch.stack(images)) ** 2).mean()}


class _Points(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.full((1,), float(i)), {}


def test_train_applies_the_step_schedule_per_epoch(tmp_path):
    """Through train(): 2 iterations per epoch, the lr the scheduler holds after each epoch."""
    cfg = TrainConfig(epochs=3, batch_size=2, lr=0.2, warmup_iters=0, schedule="step", milestones=(1, 2),
                      gamma=0.5, grad_clip=None)
    lrs = []
    result = train(_Linear(), _Points(), cfg, tmp_path, progress=False, on_epoch_end=lambda epoch, _m: lrs.append(
        torch.load(tmp_path / CHECKPOINT, weights_only=True)["scheduler"]["_last_lr"][0]))
    assert result.status == "ok"
    assert lrs == pytest.approx([0.1, 0.05, 0.05], **EXACT)  # the lr of the next epoch's first iteration


@pytest.mark.parametrize("kwargs, match", [
    ({"schedule": "linear"}, "schedule must be one of cosine, step"),
    ({"milestones": (2,)}, "apply to schedule='step' only"),
    ({"schedule": "step", "milestones": (3, 2)}, "increase strictly within 1..4"),
    ({"schedule": "step", "milestones": (2, 2)}, "increase strictly"),
    ({"schedule": "step", "milestones": (0,)}, "within 1..4"),
    ({"schedule": "step", "milestones": (5,)}, "within 1..4"),
    ({"schedule": "step", "milestones": (1.5,)}, "must be integers"),
    ({"schedule": "step", "gamma": 0.0}, "gamma must be > 0"),
])
def test_bad_schedules_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(epochs=5, **kwargs)


def test_milestones_from_a_yaml_list_become_a_tuple():
    cfg = TrainConfig(epochs=24, schedule="step", milestones=[16, 22])
    assert cfg.milestones == (16, 22)
    hash(cfg)  # still a usable frozen config
