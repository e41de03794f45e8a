"""Writing and verifying the HMAC-SM3 chain of audit rows.

mac[n] = HMAC-SM3(key, mac[n-1] | seq | at | actor | action | object | outcome | ip | detail).
Changing, deleting or reordering any row breaks the chain from that row on; the head row
anchors the tail so that deleting the newest rows is caught too. `record` queues a row in the
session; the rows are chained and written just before the transaction commits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, bindparam, event, insert, select, text, update
from sqlalchemy.orm import Session, SessionTransaction

from grassroots.db import insert_from_json, rows_json
from grassroots.kernel.audit.models import AuditHead, AuditRow

if TYPE_CHECKING:
    from grassroots.runtime import Runtime

HEAD_ID = 1


@dataclass(slots=True)
class _NewRow:
    """An audit row recorded in this transaction, written by _append_pending. A plain object:
    the row goes in by one statement of its own, so it needs nothing the ORM gives."""

    at: datetime
    actor: str
    action: str
    object_type: str
    object_id: str
    outcome: str
    source_ip: str | None
    detail: str
    seq: int = 0
    key_id: str = ""
    mac: str = ""


def _canonical(row: AuditRow | _NewRow, previous_mac: str) -> bytes:
    """What the MAC covers, of a stored row or of one about to be written."""
    fields = [
        previous_mac,
        str(row.seq),
        row.at.isoformat(timespec="microseconds"),
        row.actor,
        row.action,
        row.object_type,
        row.object_id,
        row.outcome,
        row.source_ip or "",
        row.detail,
    ]
    return "\x1f".join(fields).encode()


# Built once: building the statement (and its cache key) costs more than running it.
_LOCK_HEAD = (update(AuditHead).where(AuditHead.id == HEAD_ID)
              .values(last_seq=AuditHead.last_seq + bindparam("count", type_=BigInteger))
              .returning(AuditHead.last_seq, AuditHead.last_mac))


def _lock_head(session: Session, count: int) -> tuple[int, str]:
    """Reserve `count` sequence numbers; that row lock (a write lock on SQLite) orders appenders.

    Returns the first reserved number and the MAC of the row before it.
    """
    result = session.execute(_LOCK_HEAD, {"count": count}).first()
    if result is None:
        session.add(AuditHead(id=HEAD_ID, last_seq=count, last_mac=""))
        session.flush()
        return 1, ""
    return int(result[0]) - count + 1, str(result[1])


@dataclass
class _Pending:
    row: _NewRow
    runtime: Runtime
    transaction: SessionTransaction | None


def record(
    session: Session,
    *,
    runtime: Runtime,
    actor: str,
    action: str,
    object_type: str,
    object_id: str | int,
    outcome: str = "success",
    source_ip: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one audit row to the caller's transaction; it is written when that commits.

    The head row is the one lock every writer shares, so it is taken as the last statement
    before COMMIT (see _append_pending), not here: the chain stays exact and gapless, while
    the head stays locked only for that final append instead of for the whole action. A
    rollback (of the transaction, or of the savepoint the row was recorded in) drops the row.
    """
    row = _NewRow(
        at=runtime.clock.now(),
        actor=actor,
        action=action,
        object_type=object_type,
        object_id=str(object_id),
        outcome=outcome,
        source_ip=source_ip,
        detail=json.dumps(detail or {}, ensure_ascii=False, sort_keys=True, default=str),
    )
    transaction = session.get_nested_transaction() or session.get_transaction()
    session.info.setdefault(_PENDING, []).append(_Pending(row, runtime, transaction))


_PENDING = "grassroots.audit.pending"


@event.listens_for(Session, "before_commit")
def _append_pending(session: Session) -> None:
    """Write the transaction's recorded rows: lock the head, chain the MACs, insert, move it.

    The action's own writes are flushed first, so that the head's lock is the last one the
    transaction takes. `at` is stamped here too, under the lock, so it rises with `seq` as it
    did when rows were appended one by one.
    """
    pending: list[_Pending] = session.info.pop(_PENDING, [])
    if not pending:
        return
    session.flush()
    seq, previous_mac = _lock_head(session, len(pending))
    for item in pending:
        row = item.row
        row.seq = seq
        row.at = item.runtime.clock.now()
        row.key_id, row.mac = item.runtime.crypto.mac(_canonical(row, previous_mac))
        previous_mac = row.mac
        seq += 1
    # Plain INSERTs (nothing reads the rows back), and on PostgreSQL in the same statement as
    # the head's update, so the lock costs two round trips in all.
    values = [{name: getattr(item.row, name) for name in _COLUMNS} for item in pending]
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_APPEND_SQL, {"rows": rows_json(values), "mac": previous_mac,
                                      "head": HEAD_ID})
    else:
        session.execute(insert(AuditRow.__table__), values)  # type: ignore[arg-type]
        session.execute(update(AuditHead).where(AuditHead.id == HEAD_ID)
                        .values(last_mac=previous_mac))


_COLUMNS = ("seq", "at", "actor", "action", "object_type", "object_id", "outcome", "source_ip",
            "detail", "key_id", "mac")
# PostgreSQL: the rows (one JSON document, which json.dumps writes in C) and the head's new
# MAC in one statement.
_APPEND_SQL = text(f"WITH appended AS ({insert_from_json('audit_row', _COLUMNS, 'rows')}) "
                   "UPDATE audit_head SET last_mac = :mac WHERE id = :head")


@event.listens_for(Session, "after_soft_rollback")
def _drop_rolled_back(session: Session, previous_transaction: SessionTransaction) -> None:
    """Rows recorded in the rolled-back transaction (or a savepoint inside it) are not written."""
    pending: list[_Pending] | None = session.info.get(_PENDING)
    if not pending:
        return

    def inside(transaction: SessionTransaction | None) -> bool:
        while transaction is not None:
            if transaction is previous_transaction:
                return True
            transaction = transaction.parent
        return False

    kept = [item for item in pending if not inside(item.transaction)]
    if kept:
        session.info[_PENDING] = kept
    else:
        session.info.pop(_PENDING, None)


@event.listens_for(Session, "after_transaction_end")
def _forget_unwritten(session: Session, transaction: SessionTransaction) -> None:
    # A session closed without commit or rollback (or a failed commit) leaves nothing behind.
    if transaction.parent is None:
        session.info.pop(_PENDING, None)


@dataclass
class VerifyReport:
    rows_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        if self.ok:
            return f"audit chain intact: {self.rows_checked} rows verified"
        lines = [f"AUDIT CHAIN BROKEN: {len(self.problems)} problem(s) in "
                 f"{self.rows_checked} rows"]
        lines += [f"  - {p}" for p in self.problems[:50]]
        if len(self.problems) > 50:
            lines.append(f"  … and {len(self.problems) - 50} more")
        return "\n".join(lines)


def verify_chain(*, session: Session, runtime: Runtime, batch: int = 5000) -> VerifyReport:
    """Walk every row in id order, recomputing each MAC from the previous one."""
    report = VerifyReport()
    previous_mac = ""
    expected_seq = 1
    last_id = 0
    while True:
        rows = session.scalars(
            select(AuditRow).where(AuditRow.id > last_id).order_by(AuditRow.id).limit(batch)
        ).all()
        if not rows:
            break
        for row in rows:
            report.rows_checked += 1
            if row.seq != expected_seq:
                report.problems.append(
                    f"row id={row.id}: sequence {row.seq}, expected {expected_seq} "
                    "(a row was deleted, inserted or reordered)")
                expected_seq = row.seq
            if not runtime.crypto.verify_mac(_canonical(row, previous_mac), row.mac, row.key_id):
                report.problems.append(
                    f"row id={row.id} seq={row.seq} ({row.action}): MAC mismatch "
                    "(the row, or the one before it, was changed)")
            previous_mac = row.mac
            expected_seq += 1
            last_id = row.id
    head = session.get(AuditHead, HEAD_ID)
    head_seq = head.last_seq if head else 0
    head_mac = head.last_mac if head else ""
    if head_seq != expected_seq - 1 or head_mac != previous_mac:
        report.problems.append(
            f"chain head says {head_seq} rows ending in MAC {head_mac[:12]}…, found "
            f"{expected_seq - 1} rows ending in {previous_mac[:12]}… (newest rows deleted?)")
    return report
