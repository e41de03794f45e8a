"""The SLA sweeper: warns and escalates stored deadlines that have come due.

Each deadline is taken in its own short transaction and flipped by compare-and-set on its
version (`UPDATE deadline … WHERE id = ? AND version = ?`); only the sweeper whose UPDATE hit one
row writes the notice, the next level's deadline and the audit row. So sweepers may race and
restart freely: a row is escalated once, and a row not yet flipped is simply found next run.
On PostgreSQL the row is picked with `FOR UPDATE SKIP LOCKED`, so parallel sweepers take
different rows instead of queueing on the same one (SQLite ignores the clause; the CAS suffices).
"""

from __future__ import annotations

import enum
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import CursorResult, and_, or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from grassroots.command.actions import escalate_tier, new_deadline, notify
from grassroots.command.context import current_calendar
from grassroots.command.models import Deadline, Incident
from grassroots.command.states import (
    DEADLINE_ACTIVE_STATES,
    ESCALATION_CHAINS,
    ESCALATION_INTERVAL,
    SWEEP_INTERVAL,
    SWEEPER,
    TIER_AUDIENCE,
    TIER_GRACE,
    Audience,
    DeadlineKind,
    DeadlineLevel,
    DeadlineState,
    NoticeLevel,
    ResponseRole,
    Tier,
    TierBreach,
    breach_notice_level,
    has_next_deadline,
    next_audience,
    next_tier,
    tier_breach,
)
from grassroots.kernel.audit import record
from grassroots.kernel.i18n import DEFAULT_LANGUAGE, Term, translate

if TYPE_CHECKING:
    from grassroots.runtime import Runtime

log = logging.getLogger(__name__)

# Whose names a responder-level warning carries, per clock.
_WARN_ROLES: dict[DeadlineKind, frozenset[ResponseRole]] = {
    DeadlineKind.FIRST_ON_SCENE: frozenset({ResponseRole.FIRST_RESPONDER}),
    DeadlineKind.REINFORCEMENT: frozenset({ResponseRole.REINFORCEMENT}),
}
_DEFAULT_WARN_ROLES = frozenset({ResponseRole.FIRST_RESPONDER, ResponseRole.REINFORCEMENT})


class Outcome(enum.StrEnum):
    WARNED = "warned"
    BREACHED = "breached"
    CANCELLED = "cancelled"
    LOST = "lost"  # another sweeper (or an action) changed the row first
    NOTHING = "nothing"  # not due after all (e.g. extended since it was picked)


@dataclass
class SweepResult:
    examined: int = 0
    warned: int = 0
    breached: int = 0
    cancelled: int = 0
    lost: int = 0
    failed: int = 0
    notices: int = 0

    def count(self, outcome: Outcome, notices: int) -> None:
        self.examined += 1
        self.notices += notices
        field = {Outcome.WARNED: "warned", Outcome.BREACHED: "breached",
                 Outcome.CANCELLED: "cancelled", Outcome.LOST: "lost"}.get(outcome)
        if field is not None:
            setattr(self, field, getattr(self, field) + 1)


def due_clause(now: datetime) -> Any:
    """Open deadlines past their limit, or past their warning time and not yet warned."""
    return and_(Deadline.state == DeadlineState.OPEN,
                or_(Deadline.due_at <= now,
                    and_(Deadline.level == DeadlineLevel.NONE, Deadline.warn_at <= now)))


def pick_due(session: Session, *, now: datetime, limit: int = 1,
             exclude: set[int] | None = None) -> list[Deadline]:
    """The oldest due deadlines, locked and skipping rows another sweeper holds (PostgreSQL)."""
    stmt = select(Deadline).where(due_clause(now))
    if exclude:
        stmt = stmt.where(Deadline.id.not_in(sorted(exclude)))
    stmt = (stmt.order_by(Deadline.due_at, Deadline.id).limit(limit)
            .with_for_update(skip_locked=True)
            .execution_options(populate_existing=True))
    return list(session.scalars(stmt))


def _target(deadline: Deadline, incident: Incident, now: datetime) -> Outcome:
    if incident.state not in DEADLINE_ACTIVE_STATES[deadline.kind]:
        return Outcome.CANCELLED  # the work moved on (or stopped) without the row being settled
    if deadline.due_at <= now:
        return Outcome.BREACHED
    if deadline.level == DeadlineLevel.NONE and deadline.warn_at <= now:
        return Outcome.WARNED
    return Outcome.NOTHING


_FLIPS: dict[Outcome, dict[str, Any]] = {
    Outcome.BREACHED: {"level": DeadlineLevel.BREACHED, "state": DeadlineState.BREACHED_HANDLED},
    Outcome.WARNED: {"level": DeadlineLevel.WARNED},
    Outcome.CANCELLED: {"state": DeadlineState.CANCELLED},
}


def process_deadline(session: Session, *, runtime: Runtime, deadline: Deadline,
                     expected_version: int, now: datetime) -> tuple[Outcome, int]:
    """Flip one deadline if it is still at `expected_version`; (outcome, notices written).

    Runs inside the caller's transaction; commit afterwards.
    """
    incident = session.get(Incident, deadline.incident_id)
    assert incident is not None  # a foreign key
    outcome = _target(deadline, incident, now)
    if outcome == Outcome.NOTHING:
        return outcome, 0
    settled = {"settled_at": now} if outcome != Outcome.WARNED else {}
    result = cast(CursorResult[Any], session.execute(
        update(Deadline).where(Deadline.id == deadline.id, Deadline.version == expected_version)
        .values(version=Deadline.version + 1, **_FLIPS[outcome], **settled)
        .execution_options(synchronize_session=False)))
    if result.rowcount != 1:
        return Outcome.LOST, 0
    notices = _EFFECTS[outcome](session, runtime, deadline, incident, now)
    record(session, runtime=runtime, actor=SWEEPER.username, action=f"deadline:{outcome}",
           object_type="deadline", object_id=deadline.id,
           detail={"incident": incident.number, "kind": deadline.kind.value,
                   "step": deadline.escalation_step, "due_at": deadline.due_at,
                   "notices": notices})
    return outcome, notices


def _warned_audience(deadline: Deadline, incident: Incident) -> Audience:
    if deadline.kind == DeadlineKind.TIER:
        return TIER_AUDIENCE[Tier(incident.tier)]  # each level hears of its own limit
    return ESCALATION_CHAINS[deadline.kind][deadline.escalation_step]


def _on_warn(session: Session, runtime: Runtime, deadline: Deadline, incident: Incident,
             now: datetime) -> int:
    audience = _warned_audience(deadline, incident)
    return len(notify(
        session=session, incident=incident, deadline_id=deadline.id, level=NoticeLevel.WARNING,
        audience=audience, message_id=f"command.notice.{deadline.kind}.warning",
        params={"number": incident.number, "due_at": deadline.due_at}, at=now,
        responder_roles=_WARN_ROLES.get(deadline.kind, _DEFAULT_WARN_ROLES)))


def _on_breach(session: Session, runtime: Runtime, deadline: Deadline, incident: Incident,
               now: datetime) -> int:
    """Tell the next level up, and give it its own limit while it can still escalate."""
    if deadline.kind == DeadlineKind.TIER:
        return _on_tier_breach(session, runtime, deadline, incident, now)
    step = deadline.escalation_step
    audience = next_audience(deadline.kind, step)
    if audience is None:
        return 0
    notices = notify(
        session=session, incident=incident, deadline_id=deadline.id,
        level=breach_notice_level(step), audience=audience,
        message_id=f"command.notice.{deadline.kind}.breached",
        params={"number": incident.number, "due_at": deadline.due_at, "step": step + 1}, at=now)
    if has_next_deadline(deadline.kind, step):
        _next_step(session, deadline, now, now + ESCALATION_INTERVAL[deadline.kind])
    return len(notices)


def _next_step(session: Session, deadline: Deadline, now: datetime, due: datetime) -> None:
    """The same clock one step up the chain, from now until `due`."""
    new_deadline(session, incident_id=deadline.incident_id, kind=deadline.kind, start=now,
                 due=due, step=deadline.escalation_step + 1,
                 reinforcement_request_id=deadline.reinforcement_request_id)


def _on_tier_breach(session: Session, runtime: Runtime, deadline: Deadline, incident: Incident,
                    now: datetime) -> int:
    """A level missed its limit: remind it, then have the level above supervise, then pass it up.

    Passing up is the ESCALATE transition by compare-and-set on the incident: if a person
    changed the incident meanwhile it raises Conflict, the whole sweep transaction (this
    deadline's flip included) rolls back, and the next run tries again.
    """
    tier = Tier(incident.tier)
    above = next_tier(tier)
    step = tier_breach(deadline.escalation_step)
    params = {"number": incident.number, "due_at": deadline.due_at}
    if above is None:
        return 0  # the top level has no tier limit; nothing should get here
    if step == TierBreach.ESCALATE:
        reason = translate("command.reason.tier_limit_missed", DEFAULT_LANGUAGE,
                           tier=Term(f"command.tier.{tier}"))
        escalate_tier(session, runtime, SWEEPER, incident, current_calendar(session),
                      reason=reason)
        return 1
    level, audience = ((NoticeLevel.REMINDER, TIER_AUDIENCE[tier]) if step == TierBreach.REMIND
                       else (NoticeLevel.SUPERVISION, TIER_AUDIENCE[above]))
    notices = notify(session=session, incident=incident, deadline_id=deadline.id, level=level,
                     audience=audience, message_id=f"command.notice.tier.{step}",
                     params=params, at=now)
    _next_step(session, deadline, now, now + TIER_GRACE)
    return len(notices)


def _on_cancel(session: Session, runtime: Runtime, deadline: Deadline, incident: Incident,
               now: datetime) -> int:
    return 0


_EFFECTS = {Outcome.WARNED: _on_warn, Outcome.BREACHED: _on_breach,
            Outcome.CANCELLED: _on_cancel}


def sweep(*, session_factory: sessionmaker[Session], runtime: Runtime,
          now: datetime | None = None, batch: int = 100) -> SweepResult:
    """Handle up to `batch` due deadlines, one short transaction each, oldest first."""
    now = now or runtime.clock.now()
    result = SweepResult()
    seen: set[int] = set()
    for _ in range(batch):
        with session_factory() as session:
            try:
                with session.begin():
                    picked = pick_due(session, now=now, exclude=seen)
                    if not picked:
                        break
                    deadline = picked[0]
                    seen.add(deadline.id)
                    outcome, notices = process_deadline(
                        session, runtime=runtime, deadline=deadline,
                        expected_version=deadline.version, now=now)
            except OperationalError as exc:
                # SQLite: another sweeper committed after our read; it won this row.
                if "locked" not in str(exc.orig):
                    raise
                outcome, notices = Outcome.LOST, 0
            except Exception:
                log.exception("sweeper failed on a deadline; it is retried next run")
                result.failed += 1
                continue
        result.count(outcome, notices)
    return result


def run_sweeper(*, runtime: Runtime, stop: threading.Event,
                interval: timedelta = SWEEP_INTERVAL, batch: int = 100) -> None:
    """A worker's loop: sweep, and sleep when a pass found less than a full batch."""
    while not stop.is_set():
        result = sweep(session_factory=runtime.session_factory, runtime=runtime, batch=batch)
        if result.examined + result.failed < batch:
            stop.wait(interval.total_seconds())
