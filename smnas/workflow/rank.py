"""One process of a data-parallel job (started by :func:`smnas.workflow.launch.run_distributed`
through ``torchrun``): call the job function with this process's share, then leave the group.

    python -m smnas.workflow.rank train /tmp/kwargs.json     # as torchrun runs it, once per process
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    """``argv``: the job function's name in :mod:`smnas.workflow.jobs` and a JSON file of its kwargs."""
    from smnas.engine.distributed import shutdown_distributed
    from smnas.workflow import jobs

    function, path = argv
    kwargs = json.loads(Path(path).read_text())
    try:
        getattr(jobs, function)(**kwargs, gpus=1)
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1:])
