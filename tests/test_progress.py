"""The progress line's rate and ETA leave out compilation: a fake clock where the first step compiles for 60 s."""

import pytest

from dream_jax import summary


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_rate_and_eta_exclude_paused_time():
    clock = _Clock()
    progress = summary.Progress(0, 1000, batch_size=8, clock=clock)
    clock.now += 60.0 + 10 * 0.5  # the first interval: a 60 s compilation, then 10 steps of 0.5 s
    progress.pause(60.0)
    first = progress.update(10)
    assert first["steps_per_sec"] == pytest.approx(2.0)
    assert first["examples_per_sec"] == pytest.approx(16.0)
    assert first["eta_sec"] == pytest.approx(990 * 0.5)
    clock.now += 5.0
    assert progress.update(20)["steps_per_sec"] == pytest.approx(2.0)  # the pause applied to its interval only


def test_without_pause_compilation_counts():
    # The control: the same intervals without pause() give the misleading first rate the old line printed.
    clock = _Clock()
    progress = summary.Progress(0, 1000, batch_size=8, clock=clock)
    clock.now += 65.0
    assert progress.update(10)["steps_per_sec"] == pytest.approx(10 / 65.0)


def test_negative_pause_is_ignored():
    clock = _Clock()
    progress = summary.Progress(0, 100, batch_size=1, clock=clock)
    progress.pause(-5.0)
    clock.now += 10.0
    assert progress.update(10)["steps_per_sec"] == pytest.approx(1.0)
