"""Data-key rotation: a fresh SM4 key, every registered ciphertext moved onto it, old keys retired.

The steps, each safe to repeat:

1. `rotate_data_key` adds a new current key to the key file (old keys stay, so everything still
   decrypts), then re-encrypts every registered column in batches, one transaction per batch, with
   compare-and-set updates so a value changed meanwhile is left alone. Rows already on the
   current key are skipped by the key id in their token. If rows are still on an older key that
   the ring holds (an earlier run stopped half way, or a process that had not reloaded the key
   file kept writing with the old key), a run finishes that move instead of adding yet another
   key; the summary says which it did.
2. Restart every web and worker process: each loads the key file once at start-up, and one that
   has not restarted still encrypts new values with the old key.
3. `retire_keys` drops the old keys from the file, and refuses while any registered row uses them.

Every table that stores ciphertext registers its column with `register_encrypted_column` (at
import time, next to its model) — rotation and retirement only see registered columns, so an
unregistered one would be left on a key that retirement then destroys. Keys given in
GRASSROOTS_DATA_KEYS cannot be rotated here: the platform cannot rewrite its own environment.
Database backups taken before a retirement need the retired key: keep the old key file offline
for as long as those backups are kept.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from grassroots.kernel.audit import record
from grassroots.kernel.crypto import (
    DATA_KEYS_ENV,
    TOKEN_PREFIX,
    CryptoError,
    KeyRing,
    SoftwareProvider,
    write_key_ring,
)

if TYPE_CHECKING:
    from grassroots.runtime import Runtime
    from grassroots.settings import Settings

if sys.platform != "win32":
    import fcntl

ROTATE_ACTION = "crypto:key:rotate"
RETIRE_ACTION = "crypto:key:retire"
DEFAULT_BATCH_SIZE = 500
MAX_LISTED_FAILURES = 50


class EncryptedColumn(NamedTuple):
    table: str
    pk: str
    column: str
    context: str


# Every column holding SM4-GCM tokens, with the context it was encrypted under.
ENCRYPTED_COLUMNS: list[EncryptedColumn] = []


def register_encrypted_column(table: str, pk: str, column: str, context: str) -> None:
    """Declare a ciphertext column so key rotation re-encrypts it; repeating a call is harmless."""
    entry = EncryptedColumn(table, pk, column, context)
    for known in ENCRYPTED_COLUMNS:
        if (known.table, known.column) == (table, column):
            if known != entry:
                raise ValueError(f"{table}.{column} is already registered as {known}")
            return
    ENCRYPTED_COLUMNS.append(entry)


# kernel.auth stores these; registered here by table name so this module needs no auth import.
register_encrypted_column("app_user", "id", "phone_enc", "user.phone")
register_encrypted_column("app_user", "id", "totp_secret_enc", "user.totp")


class KeyRotationRefused(CryptoError):
    """Rotation or retirement cannot go ahead; nothing was changed."""


@dataclass
class ColumnProgress:
    column: EncryptedColumn
    moved: int = 0
    changed_meanwhile: int = 0
    failed: int = 0
    missing_table: bool = False

    @property
    def name(self) -> str:
        return f"{self.column.table}.{self.column.column}"


@dataclass
class RotationResult:
    key_id: str
    new_key_created: bool
    older_key_ids: list[str]
    columns: list[ColumnProgress] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def moved(self) -> int:
        return sum(c.moved for c in self.columns)

    @property
    def failed(self) -> int:
        return sum(c.failed for c in self.columns)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def describe(self) -> str:
        if self.new_key_created:
            head = f"new data key {self.key_id} is current"
        else:
            head = (f"finished moving data onto key {self.key_id} (no new key made: rows were "
                    "still on an older key; run again for a fresh key)")
        lines = [head, f"re-encrypted {self.moved} value(s)"]
        for c in self.columns:
            if c.missing_table:
                lines.append(f"  {c.name}: table not in this database, skipped")
                continue
            extra = f", {c.changed_meanwhile} changed meanwhile" if c.changed_meanwhile else ""
            extra += f", {c.failed} FAILED" if c.failed else ""
            lines.append(f"  {c.name}: {c.moved} moved{extra}")
        if self.failures:
            lines.append(f"{self.failed} value(s) could not be decrypted and stay as they are:")
            lines += [f"  - {f}" for f in self.failures]
            if self.failed > len(self.failures):
                lines.append(f"  … and {self.failed - len(self.failures)} more")
        if self.older_key_ids:
            lines.append(
                f"older key(s) {', '.join(self.older_key_ids)} still in the key file: restart "
                "every web and worker process, then run `grassroots keys retire`")
        return "\n".join(lines)


@dataclass
class RetireResult:
    retired: list[str]
    current: str

    def describe(self) -> str:
        if not self.retired:
            return f"nothing to retire: the key file holds only the current key {self.current}"
        return (f"retired data key(s) {', '.join(self.retired)}; {self.current} is the only "
                "data key left. Keep the old key file offline while backups made before the "
                "rotation are kept.")


def rotate_data_key(
    *,
    runtime: Runtime,
    session_factory: sessionmaker[Session],
    actor: str,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> RotationResult:
    """Make a fresh current data key and re-encrypt every registered column onto it."""
    path = _key_file(runtime)
    with _key_file_lock(path):
        ring = _read_ring(path)
        columns = _registered_columns()
        with session_factory() as session:
            tables = _reflect(session, columns)
            unfinished = sum(
                _count_on_keys(session, tables[c.table], c.column,
                               [k for k in ring.data_keys if k != ring.current])
                for c in columns if c.table in tables
            )
        new_key_created = unfinished == 0
        if new_key_created:
            ring = ring.rotated()
            # On disk before any row depends on it; a crash from here on is finished by a rerun.
            write_key_ring(path, ring)
        _use_ring(runtime, ring)
        provider = SoftwareProvider(ring)
        result = RotationResult(key_id=ring.current, new_key_created=new_key_created,
                                older_key_ids=sorted(k for k in ring.data_keys
                                                     if k != ring.current))
        for column in columns:
            progress = ColumnProgress(column)
            result.columns.append(progress)
            table = tables.get(column.table)
            if table is None:
                progress.missing_table = True
                continue
            _move_column(session_factory, provider, table, column, progress, result.failures,
                         batch_size)
        with session_factory() as session, session.begin():
            record(session, runtime=runtime, actor=actor, action=ROTATE_ACTION,
                   object_type="data_key", object_id=ring.current,
                   outcome="success" if result.ok else "failure",
                   detail={"new_key": new_key_created, "moved": result.moved,
                           "failed": result.failed,
                           "columns": {c.name: c.moved for c in result.columns}})
    return result


def retire_keys(
    *,
    runtime: Runtime,
    session_factory: sessionmaker[Session],
    actor: str,
    key_ids: Sequence[str] | None = None,
) -> RetireResult:
    """Drop old data keys (default: every key but the current) once no registered row uses them."""
    path = _key_file(runtime)
    with _key_file_lock(path):
        ring = _read_ring(path)
        targets = sorted(set(key_ids) if key_ids is not None
                         else {k for k in ring.data_keys if k != ring.current})
        if not targets:
            return RetireResult(retired=[], current=ring.current)
        try:
            smaller = ring.without(targets)
        except CryptoError as exc:
            raise KeyRotationRefused(str(exc)) from None
        columns = _registered_columns()
        with session_factory() as session:
            tables = _reflect(session, columns)
            in_use = {
                f"{c.table}.{c.column}": n
                for c in columns if c.table in tables
                if (n := _count_on_keys(session, tables[c.table], c.column, targets))
            }
        if in_use:
            where = ", ".join(f"{name}: {n}" for name, n in in_use.items())
            raise KeyRotationRefused(
                f"key(s) {', '.join(targets)} still encrypt {sum(in_use.values())} value(s) "
                f"({where}); run `grassroots keys rotate` to move them first")
        with session_factory() as session, session.begin():
            record(session, runtime=runtime, actor=actor, action=RETIRE_ACTION,
                   object_type="data_key", object_id=",".join(targets),
                   detail={"retired": targets, "current": ring.current})
            session.flush()
            # Written inside the transaction: if the file cannot be written, no audit row claims
            # a retirement that did not happen.
            write_key_ring(path, smaller)
        _use_ring(runtime, smaller)
    return RetireResult(retired=targets, current=ring.current)


def cli_rotate(settings: Settings) -> int:
    """`grassroots keys rotate`: 0 done, 1 some values failed to move, 2 refused."""
    from grassroots.runtime import Runtime

    runtime = Runtime(settings)
    try:
        result = rotate_data_key(runtime=runtime, session_factory=runtime.session_factory,
                                 actor="cli")
    except CryptoError as exc:
        print(f"key rotation refused: {exc}", file=sys.stderr)
        return 2
    print(result.describe())
    return 0 if result.ok else 1


def cli_retire(settings: Settings) -> int:
    """`grassroots keys retire`: 0 done (or nothing to do), 2 refused."""
    from grassroots.runtime import Runtime

    runtime = Runtime(settings)
    try:
        result = retire_keys(runtime=runtime, session_factory=runtime.session_factory,
                             actor="cli")
    except CryptoError as exc:
        print(f"key retirement refused: {exc}", file=sys.stderr)
        return 2
    print(result.describe())
    return 0


# --- helpers -------------------------------------------------------------------------------------


def _key_file(runtime: Runtime) -> Path:
    if os.environ.get(DATA_KEYS_ENV):
        raise KeyRotationRefused(
            f"the data keys come from {DATA_KEYS_ENV}, which this program cannot rewrite; move "
            "them into the key file named by GRASSROOTS_DATA_KEY_FILE and unset the variable, "
            "or rotate them in the system that sets it")
    path = runtime.settings.data_key_file
    if not path.exists():
        raise KeyRotationRefused(f"key file {path} does not exist")
    return path


def _read_ring(path: Path) -> KeyRing:
    return KeyRing.from_json(path.read_text(encoding="utf-8"))


@contextmanager
def _key_file_lock(path: Path) -> Iterator[None]:
    """One rotation or retirement at a time: two runs adding two different 'k2' keys lose data."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if sys.platform != "win32":
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise KeyRotationRefused(
                    "another key rotation or retirement is running on this key file") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _use_ring(runtime: Runtime, ring: KeyRing) -> None:
    # This process goes on with the new ring at once; other processes pick it up at restart.
    if isinstance(runtime.crypto, SoftwareProvider):
        runtime.crypto.ring = ring


def _registered_columns() -> list[EncryptedColumn]:
    # Domains register their columns next to their models; the CLI imports every models module
    # (grassroots.models_registry) before calling us, since the kernel may not import domains.
    return list(ENCRYPTED_COLUMNS)


def _reflect(session: Session, columns: Sequence[EncryptedColumn]) -> dict[str, sa.Table]:
    """The registered tables that exist, read from the database by name."""
    connection = session.connection()
    inspector = sa.inspect(connection)
    metadata = sa.MetaData()
    tables: dict[str, sa.Table] = {}
    for name in dict.fromkeys(c.table for c in columns):
        if inspector.has_table(name):
            tables[name] = sa.Table(name, metadata, autoload_with=connection)
    return tables


def _prefix(key_id: str) -> str:
    return f"{TOKEN_PREFIX}:{key_id}:"


def _count_on_keys(session: Session, table: sa.Table, column: str,
                   key_ids: Sequence[str]) -> int:
    if not key_ids:
        return 0
    col = table.c[column]
    condition = sa.or_(*(col.startswith(_prefix(k), autoescape=True) for k in key_ids))
    return int(session.execute(sa.select(sa.func.count()).where(condition)).scalar_one())


def _move_column(
    session_factory: sessionmaker[Session],
    provider: SoftwareProvider,
    table: sa.Table,
    column: EncryptedColumn,
    progress: ColumnProgress,
    failures: list[str],
    batch_size: int,
) -> None:
    pk, col = table.c[column.pk], table.c[column.column]
    pending = sa.and_(col.is_not(None), col != "",
                      sa.not_(col.startswith(_prefix(provider.ring.current), autoescape=True)))
    last: Any = None
    while True:
        # Paging by primary key, not by "still pending", so a value that cannot be decrypted is
        # passed over once instead of being fetched again for ever.
        with session_factory() as session, session.begin():
            query = sa.select(pk, col).where(pending)
            if last is not None:
                query = query.where(pk > last)
            rows = session.execute(query.order_by(pk).limit(batch_size)).all()
            if not rows:
                return
            for row_id, token in rows:
                try:
                    new_token = provider.reencrypt(token, context=column.context)
                except CryptoError as exc:
                    progress.failed += 1
                    if len(failures) < MAX_LISTED_FAILURES:
                        failures.append(f"{progress.name} {column.pk}={row_id}: {exc}")
                    continue
                # Compare-and-set: a value rewritten since we read it is left to the next run.
                changed = session.execute(
                    sa.update(table).where(pk == row_id, col == token)
                    .values({column.column: new_token})
                ).rowcount
                if changed == 1:
                    progress.moved += 1
                else:
                    progress.changed_meanwhile += 1
            last = rows[-1][0]
