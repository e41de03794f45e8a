import sqlalchemy as sa
from sqlalchemy.orm import Session

from grassroots.kernel.audit import record
from grassroots.kernel.audit.chain import verify_chain
from grassroots.kernel.audit.models import AuditHead, AuditRow
from grassroots.runtime import Runtime


def _write_rows(session: Session, runtime: Runtime, count: int) -> None:
    for i in range(count):
        with session.begin():
            record(session, runtime=runtime, actor="alice", action="region:create",
                   object_type="region", object_id=i, detail={"n": i})


def test_an_untouched_chain_verifies(session: Session, runtime: Runtime) -> None:
    _write_rows(session, runtime, 5)
    report = verify_chain(session=session, runtime=runtime)
    assert report.ok, report.describe()
    assert report.rows_checked == 5


def test_a_changed_row_is_reported(session: Session, runtime: Runtime) -> None:
    _write_rows(session, runtime, 5)
    with session.begin():
        session.execute(sa.update(AuditRow).where(AuditRow.seq == 3).values(actor="mallory"))
    report = verify_chain(session=session, runtime=runtime)
    assert not report.ok
    assert "seq=3" in report.describe()


def test_a_deleted_middle_row_is_reported(session: Session, runtime: Runtime) -> None:
    _write_rows(session, runtime, 5)
    with session.begin():
        session.execute(sa.delete(AuditRow).where(AuditRow.seq == 2))
    assert not verify_chain(session=session, runtime=runtime).ok


def test_deleting_the_newest_row_is_reported(session: Session, runtime: Runtime) -> None:
    _write_rows(session, runtime, 5)
    with session.begin():
        session.execute(sa.delete(AuditRow).where(AuditRow.seq == 5))
    report = verify_chain(session=session, runtime=runtime)
    assert not report.ok
    assert "newest rows deleted" in report.describe()


def test_swapping_two_rows_is_reported(session: Session, runtime: Runtime) -> None:
    _write_rows(session, runtime, 4)
    with session.begin():
        session.execute(sa.update(AuditRow).where(AuditRow.seq == 2).values(seq=-2))
        session.execute(sa.update(AuditRow).where(AuditRow.seq == 3).values(seq=2))
        session.execute(sa.update(AuditRow).where(AuditRow.seq == -2).values(seq=3))
    assert not verify_chain(session=session, runtime=runtime).ok


def test_rows_recorded_in_one_transaction_chain_in_order(session: Session,
                                                         runtime: Runtime) -> None:
    with session.begin():
        for i in range(3):
            record(session, runtime=runtime, actor="alice", action="region:create",
                   object_type="region", object_id=i, detail={"n": i})
    _write_rows(session, runtime, 2)
    report = verify_chain(session=session, runtime=runtime)
    assert report.ok, report.describe()
    rows = session.scalars(sa.select(AuditRow).order_by(AuditRow.id)).all()
    assert [row.seq for row in rows] == [1, 2, 3, 4, 5]
    assert [row.object_id for row in rows] == ["0", "1", "2", "0", "1"]


def test_the_head_is_locked_only_when_the_transaction_commits(session: Session,
                                                              runtime: Runtime) -> None:
    _write_rows(session, runtime, 1)
    with session.begin():
        record(session, runtime=runtime, actor="alice", action="region:create",
               object_type="region", object_id=9)
        # Nothing touched the head yet: the shared lock is taken just before COMMIT.
        assert session.scalar(sa.select(AuditHead.last_seq)) == 1
        assert session.scalar(sa.select(sa.func.count(AuditRow.id))) == 1
    assert session.scalar(sa.select(AuditHead.last_seq)) == 2
    assert verify_chain(session=session, runtime=runtime).ok


def test_a_rolled_back_transaction_writes_no_row(session: Session, runtime: Runtime) -> None:
    _write_rows(session, runtime, 2)
    session.begin()
    record(session, runtime=runtime, actor="alice", action="region:create",
           object_type="region", object_id=7)
    session.rollback()
    _write_rows(session, runtime, 1)
    report = verify_chain(session=session, runtime=runtime)
    assert report.ok, report.describe()
    assert report.rows_checked == 3
    assert "7" not in session.scalars(sa.select(AuditRow.object_id)).all()


def test_a_rolled_back_savepoint_drops_only_its_rows(session: Session,
                                                     runtime: Runtime) -> None:
    with session.begin():
        record(session, runtime=runtime, actor="alice", action="region:create",
               object_type="region", object_id="kept-before")
        savepoint = session.begin_nested()
        record(session, runtime=runtime, actor="alice", action="region:create",
               object_type="region", object_id="dropped")
        savepoint.rollback()
        with session.begin_nested():
            record(session, runtime=runtime, actor="alice", action="region:create",
                   object_type="region", object_id="kept-in-savepoint")
        record(session, runtime=runtime, actor="alice", action="region:create",
               object_type="region", object_id="kept-after")
    report = verify_chain(session=session, runtime=runtime)
    assert report.ok, report.describe()
    assert session.scalars(sa.select(AuditRow.object_id).order_by(AuditRow.seq)).all() == [
        "kept-before", "kept-in-savepoint", "kept-after"]
