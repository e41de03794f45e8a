"""The sweeper under races and restarts: every due deadline is escalated exactly once."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from tests.integration.command_support import load_categories, make_area, report

import grassroots.command.models  # noqa: F401  (registers the tables before create_all)
from grassroots.command import jobs
from grassroots.command.jobs import Outcome, SweepResult, pick_due, process_deadline, sweep
from grassroots.command.models import Deadline, Notice
from grassroots.command.states import DeadlineKind, DeadlineState, NoticeLevel
from grassroots.kernel.audit.chain import verify_chain
from grassroots.kernel.audit.models import AuditRow
from grassroots.kernel.clock import FixedClock
from grassroots.runtime import Runtime

COUNT = 12


@pytest.fixture
def due(session: Session, runtime: Runtime, clock: FixedClock) -> list[int]:
    """COUNT incidents nobody was sent to, their dispatch clocks a second past due."""
    load_categories(session, runtime)
    area = make_area(session)
    for i in range(COUNT):
        report(session, runtime, area, description=f"#{i}",
               lon=area.zone_a.min_lon + 0.0005 * (i + 1))
    clock.advance(timedelta(seconds=61))
    return list(session.scalars(sa.select(Deadline.id).where(
        Deadline.state == DeadlineState.OPEN, Deadline.kind == DeadlineKind.DISPATCH)
        .order_by(Deadline.id)))


def _escalations(session: Session) -> Counter[int]:
    session.expire_all()
    rows = session.scalars(sa.select(Notice.deadline_id).where(
        Notice.level != NoticeLevel.WARNING)).all()
    return Counter(rows)


def _audited(session: Session) -> Counter[str]:
    rows = session.scalars(sa.select(AuditRow.object_id).where(
        AuditRow.action == "deadline:breached")).all()
    return Counter(rows)


def test_a_single_sweep_escalates_every_due_deadline_once(
        session: Session, runtime: Runtime, clock: FixedClock, due: list[int]) -> None:
    result = sweep(session_factory=runtime.session_factory, runtime=runtime)
    assert (result.examined, result.breached, result.notices) == (COUNT, COUNT, COUNT)
    assert _escalations(session) == Counter({d: 1 for d in due})
    assert sweep(session_factory=runtime.session_factory, runtime=runtime).examined == 0


def test_it_escalates_once_when_two_sweepers_race_in_threads(
        session: Session, runtime: Runtime, clock: FixedClock, due: list[int]) -> None:
    barrier = threading.Barrier(2)
    results: list[SweepResult] = []

    def sweeper() -> None:
        barrier.wait()
        results.append(sweep(session_factory=runtime.session_factory, runtime=runtime))

    threads = [threading.Thread(target=sweeper) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # A row lost to the other sweeper is theirs; anything left over is found by the next run.
    leftover = sweep(session_factory=runtime.session_factory, runtime=runtime)

    assert sum(r.breached for r in results) + leftover.breached == COUNT
    assert sum(r.failed for r in results) == 0
    assert _escalations(session) == Counter({d: 1 for d in due})
    assert _audited(session) == Counter({str(d): 1 for d in due})
    assert verify_chain(session=session, runtime=runtime).ok


def test_a_sweeper_holding_a_stale_read_loses_the_compare_and_set(
        session: Session, runtime: Runtime, clock: FixedClock, due: list[int]) -> None:
    now = clock.now()
    with runtime.session_factory() as slow:
        stale = pick_due(slow, now=now, limit=COUNT)
        versions = {d.id: d.version for d in stale}
        slow.commit()  # sweeper A read the rows, then stalled

        sweep(session_factory=runtime.session_factory, runtime=runtime)  # sweeper B did them

        outcomes = []
        for deadline in stale:
            with slow.begin():
                outcome, notices = process_deadline(slow, runtime=runtime, deadline=deadline,
                                                    expected_version=versions[deadline.id],
                                                    now=now)
            outcomes.append((outcome, notices))
    assert outcomes == [(Outcome.LOST, 0)] * COUNT
    assert _escalations(session) == Counter({d: 1 for d in due})


def test_a_row_held_by_one_sweeper_is_skipped_or_lost_by_the_other(
        session: Session, runtime: Runtime, clock: FixedClock, due: list[int]) -> None:
    now = clock.now()
    postgres = session.get_bind().dialect.name == "postgresql"
    with runtime.session_factory() as holder:
        holder.begin()
        [held] = pick_due(holder, now=now)  # PostgreSQL: FOR UPDATE SKIP LOCKED holds the row
        other = sweep(session_factory=runtime.session_factory, runtime=runtime)
        try:
            outcome, _ = process_deadline(holder, runtime=runtime, deadline=held,
                                          expected_version=held.version, now=now)
            holder.commit()
        except OperationalError:  # SQLite: our snapshot went stale when the other committed
            holder.rollback()
            outcome = Outcome.LOST
    if postgres:
        assert (other.breached, outcome) == (COUNT - 1, Outcome.BREACHED)
    else:
        assert (other.breached, outcome) == (COUNT, Outcome.LOST)
    assert _escalations(session) == Counter({d: 1 for d in due})


def test_a_sweeper_restarted_mid_run_misses_nothing_and_repeats_nothing(
        session: Session, runtime: Runtime, clock: FixedClock, due: list[int]) -> None:
    first = sweep(session_factory=runtime.session_factory, runtime=runtime, batch=1)
    assert first.examined == 1  # then the process stopped
    second = sweep(session_factory=runtime.session_factory, runtime=runtime)
    assert second.examined == COUNT - 1
    assert _escalations(session) == Counter({d: 1 for d in due})
    assert _audited(session) == Counter({str(d): 1 for d in due})


def test_a_crash_inside_one_row_rolls_it_back_for_the_next_run(
        session: Session, runtime: Runtime, clock: FixedClock, due: list[int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = jobs._EFFECTS[Outcome.BREACHED]
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("worker killed halfway")
        return real(*args, **kwargs)

    monkeypatch.setitem(jobs._EFFECTS, Outcome.BREACHED, flaky)
    first = sweep(session_factory=runtime.session_factory, runtime=runtime)
    assert (first.failed, first.breached) == (1, COUNT - 1)
    open_rows = session.scalars(sa.select(Deadline).where(
        Deadline.state == DeadlineState.OPEN, Deadline.id.in_(due))).all()
    assert [d.version for d in open_rows] == [1]  # the flip was rolled back with the crash
    second = sweep(session_factory=runtime.session_factory, runtime=runtime)
    assert second.breached == 1
    assert _escalations(session) == Counter({d: 1 for d in due})


def test_the_sweeper_loop_stops_when_told(runtime: Runtime, clock: FixedClock,
                                          due: list[int]) -> None:
    stop = threading.Event()
    worker = threading.Thread(target=jobs.run_sweeper,
                              kwargs={"runtime": runtime, "stop": stop,
                                      "interval": timedelta(milliseconds=10)})
    worker.start()
    stop.set()
    worker.join(timeout=10)
    assert not worker.is_alive()
