"""Logging set-up shared by the command line, the workflow's jobs and the fork server."""
from __future__ import annotations

import logging
from pathlib import Path


def setup_logging(log_file: str | Path) -> None:
    """Send this process's log records to ``log_file`` (and stderr)."""
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[logging.FileHandler(log_file, mode="w"), logging.StreamHandler()], force=True)
