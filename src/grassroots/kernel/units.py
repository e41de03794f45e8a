"""One transaction per action, shared by every kernel and domain `actions` module."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session, SessionTransactionOrigin


@contextmanager
def unit_of_work(session: Session) -> Iterator[None]:
    """One transaction per action; an action called inside a caller's explicit begin() joins it.

    A session that has only read so far (autobegun) is committed by this action's write, or
    rolled back with it; a session with no transaction gets its own.
    """
    transaction = session.get_transaction()
    if transaction is None:
        with session.begin():
            yield
        return
    if transaction.origin is SessionTransactionOrigin.AUTOBEGIN:
        try:
            yield
        except BaseException:
            session.rollback()
            raise
        session.commit()
        return
    yield
    session.flush()
