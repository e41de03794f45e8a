"""Group commit for the intake: the reports waiting at one moment go in as one transaction.

One writer thread per process takes whatever reports are queued when it is free (up to
MAX_BATCH), writes them with actions.intake_many and only then answers each caller: nothing is
acknowledged before the transaction that holds it has committed. A quiet queue costs nothing
extra (a lone report is a batch of one, written at once); under load the batches grow by
themselves while the writer is busy, so the day's number counter, the audit chain's head and
the commit's disk flush are paid once per batch instead of once per report.

A report the batch refuses (a bad category, a point outside the reporter's scope …) gets its
own error and the others go on. A database error rolls the whole batch back; every report in it
is then taken by itself (actions.intake_one), so one bad row or a lost idempotency race fails
alone, as it would have without the batch.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from grassroots.command.actions import (
    IntakeAlone,
    IntakeCall,
    IntakeResult,
    intake_many,
    intake_one,
)
from grassroots.command.context import intake_context

if TYPE_CHECKING:
    from grassroots.runtime import Runtime

MAX_BATCH = 64
# The writer thread ends after this long with nothing to do, and starts again with the next
# report: an idle process (or a test's app) keeps no thread.
IDLE_EXIT_S = 5.0

log = logging.getLogger(__name__)


@dataclass
class _Job:
    call: IntakeCall
    future: Future[IntakeResult] = field(default_factory=Future)


class WriterClosed(RuntimeError):
    """The app is shutting down and takes no more reports."""


class IntakeWriter:
    """submit(call) from any thread; it returns once the report is committed (or raises its
    error). close() writes what is queued and stops the thread."""

    def __init__(self, runtime: Runtime, *, max_batch: int = MAX_BATCH,
                 idle_exit_s: float = IDLE_EXIT_S) -> None:
        self._runtime = runtime
        self._max_batch = max_batch
        self._idle_exit_s = idle_exit_s
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = 0  # batches written, for tests and the bench
        self.largest_batch = 0

    @property
    def waiting(self) -> int:
        """Reports queued for the next batch."""
        return self._queue.qsize()

    def submit(self, call: IntakeCall) -> IntakeResult:
        return self._enqueue(call).result()

    async def submit_async(self, call: IntakeCall) -> IntakeResult:
        """submit for a coroutine: the event loop goes on serving while the report waits."""
        return await asyncio.wrap_future(self._enqueue(call))

    def _enqueue(self, call: IntakeCall) -> Future[IntakeResult]:
        job = _Job(call)
        with self._lock:
            if self._closed:
                raise WriterClosed()
            self._queue.put(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="grassroots-intake-writer")
                self._thread.start()
        return job.future

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._queue.put(None)
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            try:
                job = self._queue.get(timeout=self._idle_exit_s)
            except queue.Empty:
                with self._lock:  # submit puts under this lock, so nothing slips past
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            if job is None:
                return
            jobs, stop = self._gather(job)
            self._write(jobs)
            if stop:
                return

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """The first job and whatever else is waiting now; whether close() was asked for."""
        jobs = [first]
        while len(jobs) < self._max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _write(self, jobs: list[_Job]) -> None:
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(jobs))
        try:
            outcomes = self._write_batch([job.call for job in jobs])
        except Exception:  # the batch rolled back: each report on its own, see the module doc
            log.info("intake batch of %d rolled back; taking its reports one by one",
                     len(jobs), exc_info=True)
            outcomes = [IntakeAlone() for _ in jobs]
        for job, outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, IntakeAlone):
                self._write_alone(job)
            elif isinstance(outcome, Exception):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)

    def _write_batch(self, calls: list[IntakeCall]) -> list[IntakeResult | Exception]:
        with self._runtime.session_factory() as session:
            calendar, locator = intake_context(session)
            return intake_many(session=session, runtime=self._runtime, calendar=calendar,
                               locator=locator, calls=calls)

    def _write_alone(self, job: _Job) -> None:
        try:
            with self._runtime.session_factory() as session:
                calendar, locator = intake_context(session)
                job.future.set_result(intake_one(
                    session=session, runtime=self._runtime, calendar=calendar,
                    locator=locator, call=job.call))
        except Exception as exc:
            job.future.set_exception(exc)
