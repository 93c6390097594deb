"""The widget's job runner: one :class:`~napari_simseg.annotator.jobs.Job` at a time on a napari
worker thread, its progress bar and *Cancel*.

``Job.compute`` runs on the worker; ``on_yield``, ``finish``, ``fail`` and ``cancel`` run on
the GUI thread (through the worker's signals), and :attr:`JobWorker.ended` says once what
came of it: the job's kind, its one-line message, its timing and what ``finish`` returned.
"""

from __future__ import annotations

import inspect

from qtpy.QtCore import QObject, QTimer, Signal

from napari_simseg.annotator.dialogs import JobError, shield_runtime_errors
from napari_simseg.annotator.jobs import Job, one_line

__all__ = ["JobWorker"]


class JobWorker(QObject):
    """Runs jobs on napari worker threads, one at a time, with a progress bar and *Cancel*.

    A ``finish`` that is a generator runs one step per :attr:`STEP_PAUSE_MS`: a zero-delay timer
    would be served before the canvas's paint and the other timers, starving them as if the
    steps were one.

    Parameters
    ----------
    progress : QProgressBar
        Shown, busy then counting ``(done, total)``, while a generator job runs.
    cancel_button : QPushButton
        Shown with it; stops the generator after its current step.

    Signals
    -------
    ended(str kind, str message, str timing, object value)
        The job ended: ``value`` is what ``finish`` returned (None when it failed or was
        cancelled), ``message`` its summary (or the failure, the cancellation).
    idle()
        The worker is gone: the next job may start.
    """

    STEP_PAUSE_MS = 30  # between GUI steps: time for a paint and other timers
    ended = Signal(str, str, str, object)
    idle = Signal()

    def __init__(self, progress, cancel_button, parent=None):
        super().__init__(parent)
        self.progress = progress
        self.cancel_button = cancel_button
        self.worker = None
        self.job: Job | None = None
        self._ended = False  # whether the running job has reported its end
        self._steps = None  # the GUI steps of a finish still running (one per event-loop turn)
        self._worker_gone = False  # the worker ended while those steps run

    @property
    def busy(self) -> bool:
        return self.worker is not None or self._steps is not None

    def start(self, job: Job) -> None:
        """Run ``job.compute`` on a napari worker; what comes back arrives as signals."""
        from napari.qt.threading import create_worker

        # errors are shown in the status line, not re-raised in the GUI thread
        compute = shield_runtime_errors(job.compute) if job.is_generator else job.compute
        worker = create_worker(compute, _start_thread=False, _ignore_errors=True)
        if job.is_generator:
            worker.yielded.connect(self._on_yielded)
            worker.aborted.connect(self._on_aborted)
            self.progress.setRange(0, 0)  # busy until the first (done, total)
            self.progress.setVisible(True)
            self.cancel_button.setVisible(True)
            self.cancel_button.setEnabled(True)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self.worker, self.job, self._ended, self._worker_gone = worker, job, False, False
        worker.start()

    def cancel(self) -> bool:
        """Stop a running generator job after its current step; returns whether one was asked to."""
        if self.worker is None or self.job is None or not self.job.is_generator:
            return False
        self.worker.quit()
        self.cancel_button.setEnabled(False)
        return True

    def shutdown(self, msecs: int = 10000) -> None:
        """Stop the running job (a generator at its next step; a round just ends) and wait for it."""
        if self.worker is not None:
            self.worker.quit()
            self.worker.await_workers(msecs=msecs)

    def _end(self, kind: str, message: str, timing: str = "", value=None) -> None:
        self._ended = True
        self.ended.emit(kind, message, timing, value)

    def _on_yielded(self, value) -> None:
        job = self.job
        if job is None or job.on_yield is None:
            return
        done, total = value[0], value[1]
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        job.on_yield(value)

    def _on_returned(self, result) -> None:
        job = self.job
        if job is None:
            return
        try:
            value = job.finish(result)
        except (ValueError, RuntimeError, OSError, IndexError) as exc:
            self._end(job.kind, one_line(exc))
            return
        if inspect.isgenerator(value):
            self._steps = value
            QTimer.singleShot(self.STEP_PAUSE_MS, self._next_step)
            return
        self._end(job.kind, job.summary(value), job.timing(value), value)

    def _next_step(self) -> None:
        """Run one GUI step of a finish, then let the event loop run before the next."""
        job = self.job
        try:
            next(self._steps)
        except StopIteration as stop:
            self._steps = None
            self._end(job.kind, job.summary(stop.value), job.timing(stop.value), stop.value)
        except (ValueError, RuntimeError, OSError, IndexError) as exc:
            self._steps = None
            self._end(job.kind, one_line(exc))
        else:
            QTimer.singleShot(self.STEP_PAUSE_MS, self._next_step)
            return
        if self._worker_gone:
            self._on_finished()

    def _on_errored(self, exc) -> None:
        job = self.job
        if job is not None:
            if isinstance(exc, JobError) and exc.__cause__ is not None:
                exc = exc.__cause__
            self._end(job.kind, job.fail(exc))

    def _on_aborted(self) -> None:
        job = self.job
        if job is not None and job.cancel is not None:
            self._end(job.kind, job.cancel())

    def _on_finished(self) -> None:
        if self._steps is not None:  # its finish still runs step by step: the job ends after it
            self._worker_gone = True
            return
        job = self.job
        if job is not None and not self._ended:
            # a generator quit before it yielded again still has to release the session
            message = job.cancel() if job.cancel is not None else job.fail(RuntimeError("stopped"))
            self._end(job.kind, message)
        self.worker = None
        self.job = None
        self.progress.setVisible(False)
        self.cancel_button.setVisible(False)
        self.idle.emit()
