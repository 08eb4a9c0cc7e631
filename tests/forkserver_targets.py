"""Calls for tests/test_forkserver.py, run as jobs through smnas.forkserver."""
import json
import logging
import os
import sys
import time


def report(path: str, message: str = "") -> None:
    """Write where and how this job ran; print ``message`` to stdout."""
    info = {"pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(), "env": os.environ.get("SMNAS_TEST_VALUE"),
            "torch_preloaded": "torch" in sys.modules}
    with open(path, "w") as f:
        json.dump(info, f)
    logging.getLogger("smnas.test").info("reported to %s", path)
    print(message, flush=True)


def fail(message: str) -> None:
    raise ValueError(message)


def exit_with(code: int) -> None:
    sys.exit(code)


def wait(path: str) -> None:
    """Write this job's pid to ``path``, then sleep until killed."""
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(600)
