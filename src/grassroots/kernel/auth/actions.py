"""Every write to accounts, login sessions, TOTP and API tokens: one transaction, one audit row.

`actor` is the signed-in User doing the write, or a string naming a system actor ("cli",
"seed", "system"). System actors skip permission checks: they run with operator access to the
host and the key file, which is the bootstrap path for the first administrators.

Three-administrator separation (三员分立, MLPS level 3) is enforced here, not only in routes:
the system admin (users.manage) creates, resets and deactivates accounts but can only create
viewers and cannot change roles or scopes; the security admin (roles.assign) assigns roles and
data scopes but cannot create accounts; the audit admin only reads the audit trail. Nobody may
change their own role, scope or active flag.

Failed logins are writes: the failure counter, the lock and their audit rows are committed
before the error is raised. Touching `last_seen_at` / `last_used_at` and creating the anonymous
pre-login session are bookkeeping and write no audit row.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
import threading
import time
from datetime import datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import pyotp
from sqlalchemy import Select, bindparam, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, make_transient_to_detached

from grassroots.kernel.audit import record
from grassroots.kernel.auth.hashers import (
    check_password_rules,
    default_algorithm,
    hash_password,
    needs_rehash,
    verify_password,
)
from grassroots.kernel.auth.models import ApiToken, LoginSession, User
from grassroots.kernel.auth.queries import TotpEnrolment, totp_enrolment
from grassroots.kernel.auth.roles import Permission, Role, has_permission
from grassroots.kernel.auth.scope import scope_path
from grassroots.kernel.crypto import sm3
from grassroots.kernel.errors import (
    Conflict,
    GrassrootsError,
    NotAuthenticated,
    NotFound,
    PermissionDenied,
    ValidationFailed,
)
from grassroots.kernel.regions.models import Region
from grassroots.kernel.units import unit_of_work as _unit_of_work

if TYPE_CHECKING:
    from grassroots.runtime import Runtime

Actor = User | str

API_TOKEN_PREFIX = "gr_"
API_TOKEN_BYTES = 32
API_TOKEN_SHOWN_PREFIX = 10  # "gr_" and 7 characters, enough to tell tokens apart in a list
SESSION_TOKEN_BYTES = 32
CSRF_TOKEN_BYTES = 32
MAX_TOKEN_LENGTH = 200

# Writing last_seen_at on every request would make every page view a write; a minute is
# fine-grained enough for a 30-minute idle timeout.
SESSION_TOUCH_INTERVAL = timedelta(minutes=1)
SESSION_MAX_AGE = timedelta(hours=12)  # re-authenticate at least once a working day
TOTP_PENDING_MAX_AGE = timedelta(minutes=10)  # password accepted, second factor still due
API_TOKEN_TOUCH_INTERVAL = timedelta(minutes=5)
# How long a verified API token's user is kept in this process (see cached_token_user).
API_TOKEN_CACHE_S = 2.0
API_TOKEN_CACHE_MAX = 1000
TOTP_VALID_WINDOW = 1  # accept one 30-second step either side for phones whose clocks drift
TOTP_DIGITS = 6

USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{1,63}$")
PHONE_RE = re.compile(r"^\+?[0-9]{5,20}$")
DISPLAY_NAME_MAX = 120
TOKEN_NAME_MAX = 120
CLAIMED_NAME_MAX = 64

LOGIN_FAILED = "auth.login.failed"
UNUSABLE_PASSWORD_PREFIX = "!"
SYSTEM_ACTOR = "system"


# --- helpers ---------------------------------------------------------------------------------




def actor_name(actor: Actor) -> str:
    return actor if isinstance(actor, str) else actor.username


def _require(actor: Actor, permission: Permission, message_id: str | None = None) -> None:
    if isinstance(actor, str):
        return
    if not actor.is_active or not has_permission(actor.role, permission):
        raise PermissionDenied(message_id)


def _not_self(actor: Actor, user_id: int) -> None:
    if isinstance(actor, User) and actor.id == user_id:
        raise PermissionDenied("auth.user.not_self")


def _actor_scope(session: Session, actor: Actor) -> str | None:
    return None if isinstance(actor, str) else scope_path(session, actor)


def _region_for_code(session: Session, code: str | None) -> Region | None:
    if code is None or not code.strip():
        return None
    region = session.scalar(select(Region).where(Region.code == code.strip()))
    if region is None:
        raise ValidationFailed("auth.scope.unknown", code=code)
    return region


def _ensure_scope_within(session: Session, actor: Actor, region: Region | None) -> None:
    """A scoped administrator cannot hand out a scope wider than their own."""
    scope = _actor_scope(session, actor)
    if scope is None:
        return
    if region is None or not region.path.startswith(scope):
        raise PermissionDenied("auth.scope.outside")


def _ensure_manages(session: Session, actor: Actor, target: User) -> None:
    """A scoped administrator reaches only accounts scoped inside their region; others 404."""
    scope = _actor_scope(session, actor)
    if scope is None:
        return
    region = session.get(Region, target.scope_region_id) if target.scope_region_id else None
    if region is None or not region.path.startswith(scope):
        raise NotFound()


def _user_for_update(session: Session, user_id: int) -> User:
    user = session.scalar(
        select(User).where(User.id == user_id).with_for_update()
        .execution_options(populate_existing=True)
    )
    if user is None:
        raise NotFound()
    return user


def _token_hash(value: str) -> str:
    return sm3(value.encode("utf-8")).hex()


def _validate_username(username: str) -> None:
    if not USERNAME_RE.fullmatch(username):
        raise ValidationFailed("auth.user.username_invalid")


def _validate_display_name(display_name: str) -> None:
    if not display_name or len(display_name) > DISPLAY_NAME_MAX:
        raise ValidationFailed("auth.user.display_name_invalid", max=DISPLAY_NAME_MAX)


def _normalise_phone(phone: str) -> str:
    compact = re.sub(r"[\s()-]", "", phone)
    if not PHONE_RE.fullmatch(compact):
        raise ValidationFailed("auth.phone.invalid")
    return compact


@lru_cache(maxsize=4)
def _dummy_hash(algorithm: str) -> str:
    return hash_password("grassroots-dummy-Password-1", algorithm=algorithm)


def _unusable_hash() -> str:
    """A value no hasher recognises, so no password ever matches it."""
    return UNUSABLE_PASSWORD_PREFIX + secrets.token_urlsafe(24)


def _burn_verify(password: str) -> None:
    """Spend a verification's worth of time so an unknown name answers as slowly as a known one."""
    verify_password(_dummy_hash(default_algorithm()), password)


def _password_matches(user: User, password: str) -> bool:
    if user.password_hash.startswith(UNUSABLE_PASSWORD_PREFIX):
        _burn_verify(password)
        return False
    return verify_password(user.password_hash, password)


def _claimed(username: str) -> str:
    return username.strip()[:CLAIMED_NAME_MAX] or "(empty)"


def _is_locked(user: User, now: datetime) -> bool:
    return user.locked_until is not None and user.locked_until > now


def _register_failure(session: Session, *, runtime: Runtime, user: User, now: datetime,
                      reason: str, source_ip: str | None) -> None:
    """Count one failed login (password or TOTP); lock the account at the threshold."""
    user.failed_logins = (user.failed_logins or 0) + 1
    record(session, runtime=runtime, actor=user.username, action="user:login:failed",
           object_type="user", object_id=user.id, outcome="failure", source_ip=source_ip,
           detail={"reason": reason, "failed_logins": user.failed_logins})
    threshold = runtime.settings.lockout_threshold
    if user.failed_logins >= threshold:
        user.locked_until = now + timedelta(minutes=runtime.settings.lockout_minutes)
        user.failed_logins = 0
        # A second row: the lock is its own security event that alerting can key on.
        record(session, runtime=runtime, actor=SYSTEM_ACTOR, action="user:locked",
               object_type="user", object_id=user.id, outcome="success", source_ip=source_ip,
               detail={"after_failures": threshold, "locked_until": user.locked_until})


def _end_sessions_of(session: Session, user_id: int, keep_session_id: int | None = None) -> int:
    query = delete(LoginSession).where(LoginSession.user_id == user_id)
    if keep_session_id is not None:
        query = query.where(LoginSession.id != keep_session_id)
    return int(session.execute(query).rowcount or 0)


# --- accounts --------------------------------------------------------------------------------


def create_user(
    *,
    session: Session,
    actor: Actor,
    username: str,
    display_name: str,
    role: Role,
    scope_code: str | None,
    password: str | None,
    runtime: Runtime,
    phone: str | None = None,
    source_ip: str | None = None,
) -> User:
    """Create an account; only the CLI or a role-assigning admin creates anything but a viewer.

    `password=None` makes an account that cannot sign in with a password (e.g. one that binds
    a WeChat identity later) until a password is set by change_password.
    """
    _require(actor, Permission.USERS_MANAGE)
    if role != Role.VIEWER:
        _require(actor, Permission.ROLES_ASSIGN, "auth.role.needs_security_admin")
    username = username.strip()
    display_name = display_name.strip()
    _validate_username(username)
    _validate_display_name(display_name)
    if password is not None:
        check_password_rules(password, username=username)
    phone_value = _normalise_phone(phone) if phone else None
    # Hashing is slow on purpose, so it happens outside the transaction.
    password_hash = hash_password(password) if password is not None else _unusable_hash()
    with _unit_of_work(session):
        region = _region_for_code(session, scope_code)
        _ensure_scope_within(session, actor, region)
        taken = session.scalar(
            select(User.id).where(func.lower(User.username) == username.lower()))
        if taken is not None:
            raise Conflict("auth.user.exists", username=username)
        now = runtime.clock.now()
        user = User(
            username=username, display_name=display_name, role=role,
            scope_region_id=region.id if region else None, password_hash=password_hash,
            totp_enabled=False, failed_logins=0, is_active=True, created_at=now,
            password_changed_at=now,
        )
        if phone_value:
            user.phone_enc = runtime.crypto.encrypt(phone_value, context="user.phone")
            user.phone_index = runtime.crypto.blind_index(phone_value, context="user.phone")
        session.add(user)
        try:
            session.flush()
        except IntegrityError:
            raise Conflict("auth.user.exists", username=username) from None
        record(session, runtime=runtime, actor=actor_name(actor), action="user:create",
               object_type="user", object_id=user.id, source_ip=source_ip,
               detail={"username": username, "role": role.value,
                       "scope": region.code if region else None,
                       "phone": phone_value is not None, "password": password is not None})
    return user


def change_password(
    *,
    session: Session,
    runtime: Runtime,
    actor: Actor,
    user_id: int,
    new_password: str,
    current_password: str | None = None,
    keep_session_id: int | None = None,
    source_ip: str | None = None,
) -> User:
    """Change one's own password (current one required) or reset another's (users.manage).

    Every other login session of the account ends; `keep_session_id` spares the caller's own.
    """
    own = isinstance(actor, User) and actor.id == user_id
    if not own:
        _require(actor, Permission.USERS_MANAGE)
    failure: GrassrootsError | None = None
    with _unit_of_work(session):
        user = _user_for_update(session, user_id)
        if not own:
            _ensure_manages(session, actor, user)
        check_password_rules(new_password, username=user.username)
        if own and not verify_password(user.password_hash, current_password or ""):
            record(session, runtime=runtime, actor=actor_name(actor),
                   action="user:password:change", object_type="user", object_id=user.id,
                   outcome="failure", source_ip=source_ip, detail={"reason": "wrong_current"})
            failure = ValidationFailed("auth.password.wrong_current")
        elif verify_password(user.password_hash, new_password):
            raise ValidationFailed("auth.password.reused")
        else:
            user.password_hash = hash_password(new_password)
            user.password_changed_at = runtime.clock.now()
            ended = _end_sessions_of(session, user.id, keep_session_id)
            record(session, runtime=runtime, actor=actor_name(actor),
                   action="user:password:change" if own else "user:password:reset",
                   object_type="user", object_id=user.id, source_ip=source_ip,
                   detail={"sessions_ended": ended})
    if failure is not None:
        raise failure
    return user


def set_role(*, session: Session, runtime: Runtime, actor: Actor, user_id: int, role: Role,
             source_ip: str | None = None) -> User:
    """Assign a role: the security admin's job alone (roles.assign), never on oneself."""
    _require(actor, Permission.ROLES_ASSIGN, "auth.role.needs_security_admin")
    _not_self(actor, user_id)
    with _unit_of_work(session):
        user = _user_for_update(session, user_id)
        _ensure_manages(session, actor, user)
        if user.role == role:
            return user
        previous = user.role
        user.role = role
        record(session, runtime=runtime, actor=actor_name(actor), action="user:role:change",
               object_type="user", object_id=user.id, source_ip=source_ip,
               detail={"from": previous.value, "to": role.value})
    forget_cached_tokens()
    return user


def set_scope(*, session: Session, runtime: Runtime, actor: Actor, user_id: int,
              scope_code: str | None, source_ip: str | None = None) -> User:
    """Set the data scope (a region code, None = whole platform): security admin only."""
    _require(actor, Permission.ROLES_ASSIGN, "auth.role.needs_security_admin")
    _not_self(actor, user_id)
    with _unit_of_work(session):
        user = _user_for_update(session, user_id)
        _ensure_manages(session, actor, user)
        region = _region_for_code(session, scope_code)
        _ensure_scope_within(session, actor, region)
        new_id = region.id if region else None
        if user.scope_region_id == new_id:
            return user
        previous = session.get(Region, user.scope_region_id) if user.scope_region_id else None
        user.scope_region_id = new_id
        record(session, runtime=runtime, actor=actor_name(actor), action="user:scope:change",
               object_type="user", object_id=user.id, source_ip=source_ip,
               detail={"from": previous.code if previous else None,
                       "to": region.code if region else None})
    forget_cached_tokens()
    return user


def deactivate_user(*, session: Session, runtime: Runtime, actor: Actor, user_id: int,
                    source_ip: str | None = None) -> User:
    """Disable an account: its sessions end and its API tokens are revoked at once."""
    _require(actor, Permission.USERS_MANAGE)
    _not_self(actor, user_id)
    with _unit_of_work(session):
        user = _user_for_update(session, user_id)
        _ensure_manages(session, actor, user)
        if not user.is_active:
            return user
        now = runtime.clock.now()
        user.is_active = False
        ended = _end_sessions_of(session, user.id)
        revoked = session.execute(
            update(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
            .values(revoked_at=now)
        ).rowcount
        record(session, runtime=runtime, actor=actor_name(actor), action="user:deactivate",
               object_type="user", object_id=user.id, source_ip=source_ip,
               detail={"sessions_ended": ended, "tokens_revoked": int(revoked or 0)})
    forget_cached_tokens()
    return user


def activate_user(*, session: Session, runtime: Runtime, actor: Actor, user_id: int,
                  source_ip: str | None = None) -> User:
    _require(actor, Permission.USERS_MANAGE)
    _not_self(actor, user_id)
    with _unit_of_work(session):
        user = _user_for_update(session, user_id)
        _ensure_manages(session, actor, user)
        if user.is_active:
            return user
        user.is_active = True
        record(session, runtime=runtime, actor=actor_name(actor), action="user:activate",
               object_type="user", object_id=user.id, source_ip=source_ip)
    return user


def unlock_user(*, session: Session, runtime: Runtime, actor: Actor, user_id: int,
                source_ip: str | None = None) -> User:
    """Lift a lockout before it runs out (a locked-out colleague on the phone)."""
    _require(actor, Permission.USERS_MANAGE)
    with _unit_of_work(session):
        user = _user_for_update(session, user_id)
        _ensure_manages(session, actor, user)
        user.locked_until = None
        user.failed_logins = 0
        record(session, runtime=runtime, actor=actor_name(actor), action="user:unlock",
               object_type="user", object_id=user.id, source_ip=source_ip)
    return user


# --- logging in ------------------------------------------------------------------------------


def authenticate(*, session: Session, runtime: Runtime, username: str, password: str,
                 source_ip: str | None = None) -> User:
    """Check a password, counting failures towards a lockout. Raises NotAuthenticated.

    Every failure gives the same message, whether the name is unknown, the account disabled or
    locked, or the password wrong, and costs one hash verification, so neither the answer nor
    its timing tells whether an account exists.
    """
    now = runtime.clock.now()
    failure: GrassrootsError | None = None
    with _unit_of_work(session):
        user = session.scalar(
            select(User).where(User.username == username).with_for_update()
            .execution_options(populate_existing=True)
        )
        if user is None or not user.is_active:
            _burn_verify(password)
            record(session, runtime=runtime, actor=_claimed(username), action="user:login:failed",
                   object_type="user", object_id=user.id if user else _claimed(username),
                   outcome="failure", source_ip=source_ip,
                   detail={"reason": "unknown_user" if user is None else "inactive"})
            failure = NotAuthenticated(LOGIN_FAILED)
        elif _is_locked(user, now):
            _burn_verify(password)
            record(session, runtime=runtime, actor=user.username, action="user:login:failed",
                   object_type="user", object_id=user.id, outcome="failure",
                   source_ip=source_ip,
                   detail={"reason": "locked", "locked_until": user.locked_until})
            failure = NotAuthenticated(LOGIN_FAILED)
        elif not _password_matches(user, password):
            _register_failure(session, runtime=runtime, user=user, now=now,
                              reason="bad_password", source_ip=source_ip)
            failure = NotAuthenticated(LOGIN_FAILED)
        else:
            if needs_rehash(user.password_hash):
                user.password_hash = hash_password(password)
            user.failed_logins = 0
            user.locked_until = None
            user.last_login_at = now
            record(session, runtime=runtime, actor=user.username, action="user:login",
                   object_type="user", object_id=user.id, source_ip=source_ip)
    if failure is not None:
        raise failure
    assert user is not None
    return user


# --- TOTP ------------------------------------------------------------------------------------


def _match_totp(secret: str, code: str, at: datetime, last_step: int | None) -> int | None:
    """The time step `code` belongs to, or None; steps at or before `last_step` are spent."""
    code = code.replace(" ", "").strip()
    if len(code) != TOTP_DIGITS or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS)
    current = totp.timecode(at)
    for step in range(current - TOTP_VALID_WINDOW, current + TOTP_VALID_WINDOW + 1):
        if last_step is not None and step <= last_step:
            continue
        if secrets.compare_digest(totp.generate_otp(step).encode(), code.encode()):
            return step
    return None


def begin_totp_enrolment(*, session: Session, runtime: Runtime, user: User,
                         source_ip: str | None = None) -> TotpEnrolment:
    """Generate a fresh secret (stored SM4-encrypted) for the user to add to an authenticator."""
    with _unit_of_work(session):
        target = _user_for_update(session, user.id)
        if target.totp_enabled:
            raise Conflict("auth.totp.already_enabled")
        secret = pyotp.random_base32()
        target.totp_secret_enc = runtime.crypto.encrypt(secret, context="user.totp")
        target.totp_last_step = None
        record(session, runtime=runtime, actor=target.username, action="totp:begin",
               object_type="user", object_id=target.id, source_ip=source_ip)
    return totp_enrolment(username=target.username, secret=secret)


def confirm_totp(*, session: Session, runtime: Runtime, user: User, code: str,
                 source_ip: str | None = None) -> User:
    """Turn TOTP on once the user proves their authenticator shows the right code."""
    failure: GrassrootsError | None = None
    with _unit_of_work(session):
        target = _user_for_update(session, user.id)
        if target.totp_enabled:
            raise Conflict("auth.totp.already_enabled")
        if not target.totp_secret_enc:
            raise ValidationFailed("auth.totp.not_started")
        secret = runtime.crypto.decrypt(target.totp_secret_enc, context="user.totp")
        step = _match_totp(secret, code, runtime.clock.now(), None)
        if step is None:
            record(session, runtime=runtime, actor=target.username, action="totp:enable",
                   object_type="user", object_id=target.id, outcome="failure",
                   source_ip=source_ip, detail={"reason": "bad_code"})
            failure = ValidationFailed("auth.totp.invalid_code")
        else:
            target.totp_enabled = True
            target.totp_last_step = step
            record(session, runtime=runtime, actor=target.username, action="totp:enable",
                   object_type="user", object_id=target.id, source_ip=source_ip)
    if failure is not None:
        raise failure
    return target


def verify_totp(*, session: Session, runtime: Runtime, user: User, code: str,
                source_ip: str | None = None) -> bool:
    """The login's second step. Wrong codes count towards the same lockout as wrong passwords."""
    now = runtime.clock.now()
    with _unit_of_work(session):
        target = _user_for_update(session, user.id)
        reason = None
        if not target.is_active or not target.totp_enabled or not target.totp_secret_enc:
            reason = "not_enrolled"
        elif _is_locked(target, now):
            reason = "locked"
        if reason is not None:
            record(session, runtime=runtime, actor=target.username, action="user:login:failed",
                   object_type="user", object_id=target.id, outcome="failure",
                   source_ip=source_ip, detail={"reason": reason, "factor": "totp"})
            return False
        assert target.totp_secret_enc is not None
        secret = runtime.crypto.decrypt(target.totp_secret_enc, context="user.totp")
        step = _match_totp(secret, code, now, target.totp_last_step)
        if step is None:
            _register_failure(session, runtime=runtime, user=target, now=now,
                              reason="bad_totp", source_ip=source_ip)
            return False
        target.totp_last_step = step
        target.failed_logins = 0
        target.last_login_at = now
        record(session, runtime=runtime, actor=target.username, action="user:login:totp",
               object_type="user", object_id=target.id, source_ip=source_ip)
    return True


def reset_totp(*, session: Session, runtime: Runtime, actor: Actor, user_id: int,
               source_ip: str | None = None) -> User:
    """Clear a lost authenticator so the user enrols again; a security admin's task."""
    _require(actor, Permission.ROLES_ASSIGN, "auth.role.needs_security_admin")
    _not_self(actor, user_id)
    with _unit_of_work(session):
        user = _user_for_update(session, user_id)
        _ensure_manages(session, actor, user)
        user.totp_enabled = False
        user.totp_secret_enc = None
        user.totp_last_step = None
        record(session, runtime=runtime, actor=actor_name(actor), action="totp:reset",
               object_type="user", object_id=user.id, source_ip=source_ip)
    return user


# --- API tokens ------------------------------------------------------------------------------


def create_api_token(*, session: Session, runtime: Runtime, actor: Actor, name: str,
                     user_id: int | None = None,
                     source_ip: str | None = None) -> tuple[ApiToken, str]:
    """A bearer token ("gr_…") acting as its user; only its SM3 hash is kept, so show it once.

    Anyone may make tokens for themselves; tokens for others need api_tokens.manage.
    """
    if user_id is None:
        if isinstance(actor, str):
            raise ValueError("a system actor must name the user the token is for")
        user_id = actor.id
    own = isinstance(actor, User) and actor.id == user_id
    if not own:
        _require(actor, Permission.API_TOKENS_MANAGE)
    name = name.strip()
    if not name or len(name) > TOKEN_NAME_MAX:
        raise ValidationFailed("auth.token.name_invalid", max=TOKEN_NAME_MAX)
    plaintext = API_TOKEN_PREFIX + secrets.token_urlsafe(API_TOKEN_BYTES)
    with _unit_of_work(session):
        user = _user_for_update(session, user_id)
        if not own:
            _ensure_manages(session, actor, user)
        if not user.is_active:
            raise ValidationFailed("auth.token.user_inactive")
        token = ApiToken(name=name, prefix=plaintext[:API_TOKEN_SHOWN_PREFIX],
                         token_hash=_token_hash(plaintext), user_id=user.id,
                         created_at=runtime.clock.now())
        session.add(token)
        session.flush()
        record(session, runtime=runtime, actor=actor_name(actor), action="token:create",
               object_type="api_token", object_id=token.id, source_ip=source_ip,
               detail={"name": name, "prefix": token.prefix, "user": user.username})
    return token, plaintext


def revoke_api_token(*, session: Session, runtime: Runtime, actor: Actor, token_id: int,
                     source_ip: str | None = None) -> ApiToken:
    """Revoke one's own token, or anyone's with api_tokens.manage; others' tokens look absent."""
    with _unit_of_work(session):
        token = session.scalar(
            select(ApiToken).where(ApiToken.id == token_id).with_for_update()
            .execution_options(populate_existing=True)
        )
        if token is None:
            raise NotFound()
        if isinstance(actor, User) and token.user_id != actor.id:
            if not has_permission(actor.role, Permission.API_TOKENS_MANAGE):
                raise NotFound()
            owner = session.get(User, token.user_id)
            if owner is not None:
                _ensure_manages(session, actor, owner)
        if token.revoked_at is not None:
            return token
        token.revoked_at = runtime.clock.now()
        record(session, runtime=runtime, actor=actor_name(actor), action="token:revoke",
               object_type="api_token", object_id=token.id, source_ip=source_ip,
               detail={"prefix": token.prefix})
    forget_cached_tokens()
    return token


@functools.cache
def _token_lookup() -> Select[tuple[int, datetime | None, datetime | None, User]]:
    """Built once: every API request runs it, and building it costs more than running it."""
    return (select(ApiToken.id, ApiToken.revoked_at, ApiToken.last_used_at, User)
            .join(User, User.id == ApiToken.user_id)
            .where(ApiToken.token_hash == bindparam("token_hash")))


def user_for_api_token(*, session: Session, runtime: Runtime, token: str) -> User | None:
    """The active user a live token acts as, or None for an unknown, revoked or malformed one."""
    if not token.startswith(API_TOKEN_PREFIX) or len(token) > MAX_TOKEN_LENGTH:
        return None
    # Only the token columns the check needs, in the one query with the user.
    found = session.execute(_token_lookup(), {"token_hash": _token_hash(token)}).first()
    if found is None:
        return None
    token_id, revoked_at, last_used_at, user = found
    if revoked_at is not None or not user.is_active:
        return None
    _remember_token_user(runtime, token, user)
    now = runtime.clock.now()
    if last_used_at is None or now - last_used_at >= API_TOKEN_TOUCH_INTERVAL:
        with _unit_of_work(session):
            session.execute(update(ApiToken).where(ApiToken.id == token_id)
                            .values(last_used_at=now))
    return user


# Verified tokens: (database, digest of the token) -> (good until, on time.monotonic(); the
# user's column values). Why: an API client sends its token with every request, and looking it
# up each time costs the request a database round trip and a thread hop; a busy client's
# requests within API_TOKEN_CACHE_S of a lookup skip both. A revocation, deactivation, role or
# scope change made in this process forgets every entry at once (forget_cached_tokens); one
# made in another worker process takes effect here within API_TOKEN_CACHE_S.
_token_users: dict[tuple[str, bytes], tuple[float, dict[str, Any]]] = {}
_token_users_lock = threading.Lock()
_USER_COLUMNS = tuple(column.key for column in User.__table__.columns)


def _token_key(runtime: Runtime, token: str) -> tuple[str, bytes]:
    return runtime.settings.database_url, hashlib.sha256(token.encode("utf-8")).digest()


def _remember_token_user(runtime: Runtime, token: str, user: User) -> None:
    values = {name: getattr(user, name) for name in _USER_COLUMNS}
    with _token_users_lock:
        if len(_token_users) >= API_TOKEN_CACHE_MAX:
            _token_users.clear()
        _token_users[_token_key(runtime, token)] = (time.monotonic() + API_TOKEN_CACHE_S, values)


def cached_token_user(runtime: Runtime, token: str) -> User | None:
    """The user user_for_api_token gave for this token less than API_TOKEN_CACHE_S ago, as a
    detached copy of its own (no database work); None when there is none to reuse."""
    kept = _token_users.get(_token_key(runtime, token))
    if kept is None or kept[0] < time.monotonic():
        return None
    user = User(**kept[1])
    make_transient_to_detached(user)
    return user


def forget_cached_tokens() -> None:
    """Drop every verified token kept by this process (after a change to who may do what)."""
    with _token_users_lock:
        _token_users.clear()


# --- login sessions --------------------------------------------------------------------------


def start_session(
    *,
    session: Session,
    runtime: Runtime,
    user: User | None,
    previous_token: str | None = None,
    totp_pending: bool = False,
    language: str | None = None,
    source_ip: str | None = None,
) -> tuple[LoginSession, str]:
    """A new session with a new cookie value and CSRF token; the previous row is deleted.

    Always minting a new token at each step of login defeats session fixation. `user=None`
    makes the anonymous session that carries the login form's CSRF token.
    """
    cookie_value = secrets.token_urlsafe(SESSION_TOKEN_BYTES)
    now = runtime.clock.now()
    with _unit_of_work(session):
        replaced = 0
        if previous_token:
            replaced = int(session.execute(
                delete(LoginSession).where(LoginSession.token_hash == _token_hash(previous_token))
            ).rowcount or 0)
        login_session = LoginSession(
            token_hash=_token_hash(cookie_value), user_id=user.id if user else None,
            csrf_token=secrets.token_urlsafe(CSRF_TOKEN_BYTES), created_at=now, last_seen_at=now,
            totp_pending=totp_pending, language=language, source_ip=source_ip,
        )
        session.add(login_session)
        session.flush()
        if user is not None:
            record(session, runtime=runtime, actor=user.username,
                   action="session:rotate" if replaced else "session:start",
                   object_type="login_session", object_id=login_session.id, source_ip=source_ip,
                   detail={"totp_pending": totp_pending})
    return login_session, cookie_value


def _session_expired(runtime: Runtime, login_session: LoginSession, now: datetime) -> bool:
    idle = timedelta(minutes=runtime.settings.idle_timeout_minutes)
    if now - login_session.last_seen_at >= idle:
        return True
    if now - login_session.created_at >= SESSION_MAX_AGE:
        return True
    return login_session.totp_pending and now - login_session.created_at >= TOTP_PENDING_MAX_AGE


def load_session(*, session: Session, runtime: Runtime, token: str) -> LoginSession | None:
    """The live session for a cookie value, or None. Expired sessions are deleted (idle logout)."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    login_session = session.scalar(
        select(LoginSession).where(LoginSession.token_hash == _token_hash(token)))
    if login_session is None:
        return None
    now = runtime.clock.now()
    user = session.get(User, login_session.user_id) if login_session.user_id else None
    expired = _session_expired(runtime, login_session, now)
    if expired or (login_session.user_id is not None and (user is None or not user.is_active)):
        with _unit_of_work(session):
            session.execute(delete(LoginSession).where(LoginSession.id == login_session.id))
            if user is not None and expired:
                record(session, runtime=runtime, actor=user.username, action="session:expire",
                       object_type="login_session", object_id=login_session.id,
                       detail={"idle_timeout_minutes": runtime.settings.idle_timeout_minutes})
        return None
    if now - login_session.last_seen_at >= SESSION_TOUCH_INTERVAL:
        with _unit_of_work(session):
            session.execute(update(LoginSession).where(LoginSession.id == login_session.id)
                            .values(last_seen_at=now))
        login_session.last_seen_at = now
    return login_session


def end_session(*, session: Session, runtime: Runtime, token: str,
                source_ip: str | None = None) -> None:
    """Sign out: delete the session row so the cookie is worthless even if kept."""
    with _unit_of_work(session):
        login_session = session.scalar(
            select(LoginSession).where(LoginSession.token_hash == _token_hash(token)))
        if login_session is None:
            return
        user = session.get(User, login_session.user_id) if login_session.user_id else None
        session.execute(delete(LoginSession).where(LoginSession.id == login_session.id))
        if user is not None:
            record(session, runtime=runtime, actor=user.username, action="user:logout",
                   object_type="login_session", object_id=login_session.id,
                   source_ip=source_ip)


def purge_expired_sessions(*, session: Session, runtime: Runtime) -> int:
    """Delete every session past its idle or absolute limit (a periodic job); returns the count."""
    now = runtime.clock.now()
    idle_cutoff = now - timedelta(minutes=runtime.settings.idle_timeout_minutes)
    with _unit_of_work(session):
        removed = int(session.execute(
            delete(LoginSession).where(or_(
                LoginSession.last_seen_at <= idle_cutoff,
                LoginSession.created_at <= now - SESSION_MAX_AGE,
                LoginSession.totp_pending.is_(True)
                & (LoginSession.created_at <= now - TOTP_PENDING_MAX_AGE),
            ))
        ).rowcount or 0)
        if removed:
            record(session, runtime=runtime, actor=SYSTEM_ACTOR, action="session:purge",
                   object_type="login_session", object_id="*", detail={"removed": removed})
    return removed
