"""What the seeded benches (pretrain.py, search_signal.py) do before their first run: logging,
torch's threads, and the ``--out`` folder's ``settings.json``, which a rerun must match."""
from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any, Callable


def open_run(args: argparse.Namespace, make_settings: Callable[[argparse.Namespace], dict[str, Any]],
             fixed: Callable[[dict[str, Any]], Any] = lambda s: s) -> dict[str, Any]:
    """The run's settings: ``--summarize`` reads them from ``args.out``; otherwise they are made
    from ``args`` and written there, after checking that the part that must not change between
    reruns (``fixed``) equals the folder's (a rerun resumes; other settings need a new --out).

    ``args`` needs ``out``, ``threads`` and ``summarize``.
    """
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    import torch  # after OMP_NUM_THREADS

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "settings.json"
    if args.summarize:
        return json.loads(path.read_text())
    settings = make_settings(args)
    if path.exists() and fixed(json.loads(path.read_text())) != fixed(settings):
        raise SystemExit(f"{args.out} holds runs of other settings ({path}); use a new --out")
    path.write_text(json.dumps(settings, indent=2) + "\n")
    return settings
