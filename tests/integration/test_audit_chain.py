import sqlalchemy as sa
from sqlalchemy.orm import Session

from grassroots.kernel.audit import record
from grassroots.kernel.audit.chain import verify_chain
from grassroots.kernel.audit.models import AuditRow
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
