"""The device lock: shared steps run side by side, a measurement has the device alone and is
not starved by steps that keep coming. Locks of two DeviceLock objects conflict as those of two
processes do (flock locks belong to open files), so threads stand in for jobs here."""
from __future__ import annotations

import threading
import time

import pytest

from smnas.engine.device_lock import DeviceLock, lock_path


def _in_thread(fn) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def test_lock_path_per_device_and_visible_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    assert lock_path("cpu", tmp_path) != lock_path("cuda:0", tmp_path)
    assert lock_path("cuda", tmp_path) == lock_path("cuda:0", tmp_path)
    a = lock_path("cuda:0", tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert lock_path("cuda:0", tmp_path) != a
    monkeypatch.setenv("SMNAS_LOCK_DIR", str(tmp_path / "locks"))
    assert lock_path("cpu").parent == tmp_path / "locks"


def test_shared_holders_run_together(tmp_path):
    a, b = DeviceLock("cpu", tmp_path), DeviceLock("cpu", tmp_path)
    with a.shared():
        done = threading.Event()
        t = _in_thread(lambda: (b.shared().__enter__(), done.set()))
        assert done.wait(5), "a second shared holder was blocked"
        t.join()


def test_exclusive_waits_for_steps_and_holds_back_new_ones(tmp_path):
    step, timer, late = (DeviceLock("cpu", tmp_path) for _ in range(3))
    events: list[str] = []

    def measure():
        with timer.exclusive():
            events.append("measure start")
            time.sleep(0.3)
            events.append("measure end")

    def late_step():
        with late.shared():
            events.append("late step")

    with step.shared():
        t1 = _in_thread(measure)
        time.sleep(0.3)
        assert events == [], "the measurement began while a step held the device"
        t2 = _in_thread(late_step)  # arrives while the measurement waits: must queue behind it
        time.sleep(0.3)
        assert events == []
    t1.join(5)
    t2.join(5)
    assert events == ["measure start", "measure end", "late step"]


def test_steps_hold_the_lock_per_item_and_release_on_break(tmp_path):
    lock, timer = DeviceLock("cpu", tmp_path), DeviceLock("cpu", tmp_path)
    acquired = threading.Event()

    def try_exclusive():
        with timer.exclusive():
            acquired.set()

    for i in lock.steps(range(10)):
        if i == 0:
            t = _in_thread(try_exclusive)
            assert not acquired.wait(0.3), "exclusive acquired during a step"
        if i == 2:
            break
    assert acquired.wait(5), "the lock was not released when the loop ended early"
    t.join()
    assert list(lock.steps([])) == []


@pytest.mark.parametrize("mode", ["shared", "exclusive"])
def test_lock_is_released_on_error(tmp_path, mode):
    a, b = DeviceLock("cpu", tmp_path), DeviceLock("cpu", tmp_path)
    with pytest.raises(RuntimeError):
        with getattr(a, mode)():
            raise RuntimeError("boom")
    done = threading.Event()
    t = _in_thread(lambda: (b.exclusive().__enter__(), done.set()))
    assert done.wait(5)
    t.join()
