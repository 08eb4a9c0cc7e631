"""Shared fixtures: tiny data and tiny models, so the suite runs in minutes on 2 CPU cores."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

FIXTURES = Path(__file__).parent / "fixtures"
# A detector small enough to train a step in well under a second on one core.
TINY_SPEC = "resnet18@0.125+fpn:P2-P4:c16+rpn+2fc:32+96x72+gnws"


@pytest.fixture(scope="session", autouse=True)
def private_forkservers():
    """Workflow runs in the tests use fork servers of their own, stopped when the session ends
    (never a server of the user's own runs, and none left behind)."""
    from smnas.forkserver.server import stop_all

    directory = tempfile.mkdtemp(prefix="smnas-fs-")  # short: a socket path has at most 108 bytes
    previous = os.environ.get("SMNAS_FORKSERVER_DIR")
    os.environ["SMNAS_FORKSERVER_DIR"] = directory
    yield directory
    stop_all(directory)
    if previous is None:
        del os.environ["SMNAS_FORKSERVER_DIR"]
    else:
        os.environ["SMNAS_FORKSERVER_DIR"] = previous
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory) -> dict[str, Path]:
    """The built-in dataset at toy size (6 train, 3 val images of 96x72), COCO layout only."""
    from smnas.data.synthetic import make_dataset

    out = tmp_path_factory.mktemp("synthetic")
    return make_dataset(out, seed=0, num_train=6, num_val=3, image_size=(96, 72), variants=["coco"])
