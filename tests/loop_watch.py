"""How responsive napari's event loop stays: a 20 ms ``QTimer`` ticking through an action, and the
longest gap between its ticks while the action runs (an event-loop responsiveness bound, not a
speed benchmark: the GUI thread is free whenever the timer can tick)."""

from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np

__all__ = ["LoopWatch"]


class LoopWatch:
    """Ticks of a ``QTimer`` while it runs, and the longest gap between them per action.

    Parameters
    ----------
    interval_ms : int
        The timer's interval; a gap longer than it is time the event loop could not run.
    on_tick : callable, optional
        Called at each tick (e.g. to sample what a widget shows).
    """

    def __init__(self, interval_ms: int = 20, on_tick=None):
        from qtpy.QtCore import QTimer

        self.ticks: list[float] = []
        self.gaps: dict[str, float] = {}
        self.on_tick = on_tick
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        self.ticks.append(time.perf_counter())
        if self.on_tick is not None:
            self.on_tick()

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.stop()

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time in ``[start, end]`` without a tick (seconds)."""
        inside = [t for t in self.ticks if start < t < end]
        return float(np.max(np.diff([start, *inside, end])))

    @contextmanager
    def action(self, name: str):
        """Measure the longest gap while the ``with`` block runs, as ``gaps[name]``."""
        start = time.perf_counter()
        yield
        self.gaps[name] = self.longest_gap(start, time.perf_counter())

    def report(self) -> str:
        return ", ".join(f"{name} {gap * 1e3:.0f} ms" for name, gap in self.gaps.items())
