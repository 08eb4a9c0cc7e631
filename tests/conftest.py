"""Shared fixtures: tiny data and tiny models, so the suite runs in minutes on 2 CPU cores."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

FIXTURES = Path(__file__).parent / "fixtures"
# A detector small enough to train a step in well under a second on one core.
TINY_SPEC = "resnet18@0.125+fpn:P2-P4:c16+rpn+2fc:32+96x72+gnws"


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory) -> dict[str, Path]:
    """The built-in dataset at toy size (6 train, 3 val images of 96x72), COCO layout only."""
    from smnas.data.synthetic import make_dataset

    out = tmp_path_factory.mktemp("synthetic")
    return make_dataset(out, seed=0, num_train=6, num_val=3, image_size=(96, 72), variants=["coco"])
