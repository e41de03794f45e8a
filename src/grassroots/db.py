"""Engine, session factory and the declarative Base shared by every domain."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import Enum
from typing import Any, ClassVar

from sqlalchemy import DateTime, Engine, MetaData, Table, TextClause, create_engine, event, text
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapper,
    Session,
    make_transient_to_detached,
    sessionmaker,
)
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Stores aware datetimes as UTC; SQLite returns naive values, so we re-attach UTC on load."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware datetime from the clock")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the web app read while a writer commits; busy_timeout waits out short locks.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, **({"pool_pre_ping": True, "pool_size": 10, "max_overflow": 20}
                                 | kwargs))


# The request.state attribute under which the auth middleware hands the session it looked the
# bearer token up in to the request's session dependency (see take_request_session).
REQUEST_SESSION_ATTR = "db_session"


def take_request_session(state: Any, factory: sessionmaker[Session]) -> Session:
    """The session the middleware left in request.state (taken: the caller now closes it), else
    a new one. Reusing it saves a pool checkout (with its ping), a BEGIN and a ROLLBACK."""
    session = getattr(state, REQUEST_SESSION_ATTR, None)
    if isinstance(session, Session):
        setattr(state, REQUEST_SESSION_ATTR, None)
        return session
    return factory()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    with factory() as session, session.begin():
        yield session


# --- many new rows in one statement (PostgreSQL) ----------------------------------------------


def insert_in_one_statement(session: Session,
                            tables: Sequence[tuple[Table, Sequence[Mapping[str, Any]]]]) -> None:
    """PostgreSQL: the rows of several tables written by one INSERT … SELECT FROM
    json_populate_recordset(…) per table, chained as one statement (a WITH of data-modifying
    parts), so one round trip.

    Why: the ORM's flush, or an executemany, costs the Python side per row and per value (its
    unit of work, then psycopg's parameters) and a round trip per table; here each table's
    rows go as one JSON text, which json.dumps writes in C. Every row of a table must give the
    same columns; columns no row gives take their defaults from the database (a serial id).
    The statement is one, so the foreign keys between its parts are checked at its end, when
    all of them are in.
    """
    parts: list[str] = []
    params: dict[str, str] = {}
    for n, (table, rows) in enumerate(tables):
        if not rows:
            continue
        columns = [column.name for column in table.columns if column.key in rows[0]]
        parts.append(insert_from_json(table.name, columns, f"rows{n}"))
        params[f"rows{n}"] = rows_json(rows)
    if not parts:
        return
    *before, last = parts
    with_clause = ("WITH " + ", ".join(f"w{n} AS ({part})" for n, part in enumerate(before))
                   + " ") if before else ""
    session.execute(_statement(with_clause + last), params)


def insert_from_json(table: str, columns: Sequence[str], param: str) -> str:
    """PostgreSQL: an INSERT of the rows in the JSON parameter `param` (see rows_json)."""
    names = ", ".join(columns)
    return (f"INSERT INTO {table} ({names}) SELECT {names} FROM "
            f"json_populate_recordset(NULL::{table}, CAST(:{param} AS json))")


def rows_json(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows of column values as one JSON text for insert_from_json (aware datetimes only)."""
    return json.dumps(rows, ensure_ascii=False, default=_json_value)


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware datetime from the clock")
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"cannot write {type(value).__name__} as a column value")


@functools.lru_cache(maxsize=64)
def _statement(sql: str) -> TextClause:
    # Parsing a text() for its bind parameters costs more than running the statement does.
    return text(sql)


def attach_as_written(session: Session, objects: Sequence[Any]) -> None:
    """Put new ORM objects whose rows a statement has already written into the session as
    persistent (as if loaded), so that a later change to one is flushed as an UPDATE and
    nothing INSERTs them again. Every column attribute must be set (column_values sets them)."""
    for obj in objects:
        if obj in session:  # added while it was being built
            session.expunge(obj)
        make_transient_to_detached(obj)
        session.add(obj)


def column_values(obj: Any) -> dict[str, Any]:
    """A new ORM object's column values, its unset columns given their scalar defaults (or
    None) on the object too, as a flush would have written them."""
    state = obj.__dict__
    values: dict[str, Any] = {}
    for key, column in _columns_of(type(obj)):
        if key not in state:
            default = column.default
            setattr(obj, key, default.arg if default is not None and default.is_scalar
                    else None)
        values[column.key] = state[key]
    return values


def _columns_of(cls: Any) -> tuple[tuple[str, Any], ...]:
    """(attribute name, table column) of each mapped column of a class (kept per class)."""
    kept = _COLUMNS_OF.get(cls)
    if kept is None:
        mapper: Mapper[Any] = sa_inspect(cls)
        kept = _COLUMNS_OF[cls] = tuple((attr.key, attr.columns[0])
                                        for attr in mapper.column_attrs)
    return kept


_COLUMNS_OF: dict[type, tuple[tuple[str, Any], ...]] = {}
