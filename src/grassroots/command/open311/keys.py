"""Issuing and revoking Open311 API keys, and finding the client a key belongs to.

A key is shown once, when issued; the database keeps its SM3 hash (like kernel.auth's API
tokens), so a leaked table does not leak working keys. Each write is one transaction with its
audit row.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from grassroots.command.open311 import DEMO_CLIENT_NAME, DEMO_KEY
from grassroots.command.open311.models import Open311Client
from grassroots.command.states import Actor, SystemActor
from grassroots.kernel.audit import record
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Permission, has_permission
from grassroots.kernel.crypto import sm3
from grassroots.kernel.errors import Conflict, NotFound, PermissionDenied, ValidationFailed
from grassroots.settings import Environment

if TYPE_CHECKING:
    from grassroots.runtime import Runtime

KEY_PREFIX = "o311_"
KEY_BYTES = 32
KEY_SHOWN_PREFIX = 12  # "o311_" and 7 characters
MAX_KEY_LENGTH = 200
# "open311:" + the name must fit the incident's client_ref and the audit actor (120 characters).
CLIENT_NAME_MAX = 100
DEMO_ACTOR = SystemActor("system:demo")
# A signed-in User, or a SystemActor for the platform's own processes (the demo seed).
AnyActor = Actor | User


@contextmanager
def _atomic(session: Session) -> Iterator[None]:
    """Commit on success, roll back on error; a read-only transaction left open is ended first."""
    if session.in_transaction() and not (session.new or session.dirty or session.deleted):
        session.commit()
    try:
        yield
        session.commit()
    except BaseException:
        session.rollback()
        raise


def _require(actor: AnyActor, permission: Permission) -> None:
    # A SystemActor (role None) is the platform acting by rule and passes.
    if actor.role is not None and not has_permission(actor.role, permission):
        raise PermissionDenied()
    if getattr(actor, "is_active", True) is False:
        raise PermissionDenied()


def hash_key(key: str) -> str:
    return sm3(key.encode("utf-8")).hex()


def client_ref(client: Open311Client) -> str:
    """Who a client's incidents are recorded as submitted by (incident.client_ref, audit actor)."""
    return f"open311:{client.name}"


def _clean_name(name: str) -> str:
    cleaned = name.strip()
    if not cleaned or len(cleaned) > CLIENT_NAME_MAX or not cleaned.isprintable():
        raise ValidationFailed("open311.error.client_name_invalid", max=CLIENT_NAME_MAX)
    return cleaned


def _active_named(session: Session, name: str) -> Open311Client | None:
    return session.scalars(select(Open311Client).where(
        Open311Client.name == name, Open311Client.revoked_at.is_(None))).first()


def _issue(session: Session, runtime: Runtime, actor: AnyActor, name: str, key: str,
           source_ip: str | None) -> Open311Client:
    if _active_named(session, name) is not None:
        raise Conflict("open311.error.client_name_taken", name=name)
    client = Open311Client(name=name, key_prefix=key[:KEY_SHOWN_PREFIX], key_hash=hash_key(key),
                           created_by=actor.username, created_at=runtime.clock.now())
    session.add(client)
    session.flush()
    record(session, runtime=runtime, actor=actor.username, action="open311_client:issue",
           object_type="open311_client", object_id=client.id, source_ip=source_ip,
           detail={"name": name, "prefix": client.key_prefix})
    return client


def issue_open311_key(*, session: Session, runtime: Runtime, actor: AnyActor, client_name: str,
                      source_ip: str | None = None) -> tuple[Open311Client, str]:
    """A new client and its key ("o311_…"), shown only in this return value.

    Needs api_tokens.manage. A name is unique among unrevoked clients, so revoke the old key
    before issuing a new one under the same name (the name keeps idempotency keys working).
    """
    _require(actor, Permission.API_TOKENS_MANAGE)
    name = _clean_name(client_name)
    key = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
    with _atomic(session):
        client = _issue(session, runtime, actor, name, key, source_ip)
    return client, key


def revoke_open311_key(*, session: Session, runtime: Runtime, actor: AnyActor, client_id: int,
                       source_ip: str | None = None) -> Open311Client:
    """Revoke a client's key at once; revoking a revoked key changes nothing."""
    _require(actor, Permission.API_TOKENS_MANAGE)
    with _atomic(session):
        client = session.scalars(select(Open311Client).where(Open311Client.id == client_id)
                                 .with_for_update()
                                 .execution_options(populate_existing=True)).first()
        if client is None:
            raise NotFound()
        if client.revoked_at is None:
            client.revoked_at = runtime.clock.now()
            record(session, runtime=runtime, actor=actor.username,
                   action="open311_client:revoke", object_type="open311_client",
                   object_id=client.id, source_ip=source_ip,
                   detail={"name": client.name, "prefix": client.key_prefix})
    return client


def ensure_demo_key(*, session: Session, runtime: Runtime) -> str:
    """The demo client's fixed key (DEMO_KEY), issued once; refused in production.

    A demo key that an administrator has since revoked stays revoked.
    """
    if runtime.settings.environment == Environment.PRODUCTION:
        raise PermissionDenied("open311.error.demo_key_in_production")
    digest = hash_key(DEMO_KEY)
    with _atomic(session):
        existing = session.scalars(select(Open311Client)
                                   .where(Open311Client.key_hash == digest)).first()
        if existing is None:
            _issue(session, runtime, DEMO_ACTOR, DEMO_CLIENT_NAME, DEMO_KEY, None)
    return DEMO_KEY


def client_for_key(*, session: Session, key: str) -> Open311Client | None:
    """The unrevoked client a key belongs to, or None for an unknown, revoked or malformed key."""
    if not key or len(key) > MAX_KEY_LENGTH:
        return None
    client = session.scalars(select(Open311Client)
                             .where(Open311Client.key_hash == hash_key(key))).first()
    if client is None or client.revoked_at is not None:
        return None
    return client


def list_clients(*, session: Session, include_revoked: bool = True) -> list[Open311Client]:
    stmt = select(Open311Client).order_by(Open311Client.created_at.desc(),
                                          Open311Client.id.desc())
    if not include_revoked:
        stmt = stmt.where(Open311Client.revoked_at.is_(None))
    return list(session.scalars(stmt))
