"""The unit of work of a :class:`~napari_simseg.annotator.viewer_session.ViewerSession`: a
:class:`Job` split by thread, and the :class:`JobRunner` that lets one run at a time.

A job's ``compute`` touches only the core session (never a layer), so the widget runs it
on a worker thread; ``finish`` / ``fail`` / ``cancel`` run on the GUI thread and write the
layers. The console runs the same job in place (:meth:`JobRunner.run`). Qt-free.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Job", "JobRunner", "completed", "one_line"]


def one_line(exc: BaseException) -> str:
    """The first line of an error's message (a status line has one line)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _no_timing(value) -> str:
    return ""


@dataclass
class Job:
    """One computation of a :class:`ViewerSession`, split by thread.

    Attributes
    ----------
    kind : {"start", "round", "auto", "load", "propagate"}
        (``auto``, ``load`` and ``propagate`` are generators yielding ``(done, total, ...)``)
    description : str
        Human-readable, e.g. ``"round on slice 12"``.
    compute : callable
        ``compute()``; a plain function or a generator function. Touches only the core
        session, never a layer, so it may run on a worker thread.
    finish : callable
        ``finish(result)`` on the GUI thread once ``compute`` returned (generators:
        ``None``); writes the layers and returns what the synchronous API returns, or a
        generator of GUI steps that returns it (:func:`completed`; the widget lets the event
        loop run between the steps, e.g. between the layers a start adds).
    fail : callable
        ``fail(exception)`` on the GUI thread if ``compute`` raised; returns a message.
    on_yield : callable, optional
        ``on_yield(value)`` on the GUI thread for each value a generator yields.
    cancel : callable, optional
        ``cancel()`` on the GUI thread when a generator was stopped early; returns a
        message.
    slice : int, optional
        The slice a round works on.
    summary : callable
        ``summary(value)``: the one-line status of what ``finish`` returned (default ``str``).
    timing : callable
        ``timing(value)``: how long it took, in words ("" when not timed).
    """

    kind: str
    description: str
    compute: Callable[[], Any]
    finish: Callable[[Any], Any]
    fail: Callable[[BaseException], str]
    on_yield: Callable[[Any], None] | None = None
    cancel: Callable[[], str] | None = None
    slice: int | None = None
    summary: Callable[[Any], str] = str
    timing: Callable[[Any], str] = _no_timing

    @property
    def is_generator(self) -> bool:
        return inspect.isgeneratorfunction(self.compute)


def completed(value):
    """What ``finish`` returned, its steps run first when it returned a generator of them."""
    if not inspect.isgenerator(value):
        return value
    while True:
        try:
            next(value)
        except StopIteration as stop:
            return stop.value


class JobRunner:
    """One job at a time: the guard every job of a viewer session goes through.

    :meth:`hold` takes the guard for a job and returns the job with its ``finish``, ``fail``
    and ``cancel`` releasing it first and calling ``after()`` last (the session's autosave);
    :meth:`run` runs a job in place (the console).
    """

    def __init__(self, after: Callable[[], Any] | None = None):
        self._job: Job | None = None
        self.after = after

    @property
    def busy(self) -> bool:
        """Whether a job holds the guard."""
        return self._job is not None

    @property
    def current(self) -> Job | None:
        """The job holding the guard, or None."""
        return self._job

    def ensure_idle(self) -> None:
        """Raise RuntimeError while a job holds the guard."""
        if self._job is not None:
            raise RuntimeError(f"SimSeg is busy ({self._job.description}); wait for it to finish")

    def hold(self, job: Job) -> Job:
        """Take the guard for ``job``; returns it with every ending releasing the guard.

        Raises
        ------
        RuntimeError
            When another job holds it.
        """
        self.ensure_idle()

        def released(end):
            if end is None:
                return None

            def call(*args):
                self.release()
                try:
                    return end(*args)
                finally:
                    if self.after is not None:
                        self.after()

            return call

        held = dataclasses.replace(job, finish=released(job.finish), fail=released(job.fail),
                                   cancel=released(job.cancel))
        self._job = held
        return held

    def release(self) -> None:
        """Let the next job run (a job that ended, or one abandoned before it started)."""
        self._job = None

    @staticmethod
    def run(job: Job):
        """Run ``job`` on this thread: compute (feeding a generator's values to ``on_yield``), then
        finish; ``fail`` and re-raise on an error."""
        try:
            if job.is_generator:
                for value in job.compute():
                    job.on_yield(value)
                result = None
            else:
                result = job.compute()
        except BaseException as exc:
            job.fail(exc)
            raise
        return completed(job.finish(result))
