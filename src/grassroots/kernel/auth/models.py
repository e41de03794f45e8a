"""Users, login sessions and API tokens."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Enum, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from grassroots.db import Base
from grassroots.kernel.auth.roles import Role


class User(Base):
    __tablename__ = "app_user"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(120))
    role: Mapped[Role] = mapped_column(
        Enum(Role, native_enum=False, length=40, values_callable=lambda e: [m.value for m in e])
    )
    # The data scope: the user sees this region and everything below it; None = whole platform.
    scope_region_id: Mapped[int | None] = mapped_column(ForeignKey("region.id"), index=True)
    password_hash: Mapped[str] = mapped_column(String(300))
    totp_secret_enc: Mapped[str | None] = mapped_column(String(300))  # SM4-GCM ciphertext
    totp_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # The last 30-second step whose code was accepted, so a code cannot be replayed.
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)
    phone_enc: Mapped[str | None] = mapped_column(String(300))
    phone_index: Mapped[str | None] = mapped_column(String(64), index=True)  # HMAC-SM3 blind index
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None]
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime]
    password_changed_at: Mapped[datetime]
    last_login_at: Mapped[datetime | None]


class LoginSession(Base):
    """A browser session. Only a hash of the cookie value is stored; a new one is made at login.

    `user_id` is None for the anonymous session that carries the login form's CSRF token;
    `totp_pending` marks a session whose password was right but whose second factor is due.
    """

    __tablename__ = "login_session"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("app_user.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    totp_pending: Mapped[bool] = mapped_column(Boolean, default=False)
    language: Mapped[str | None] = mapped_column(String(8))
    source_ip: Mapped[str | None] = mapped_column(String(64))


class ApiToken(Base):
    """A bearer token for an integration, acting as its user; shown once, stored hashed."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    prefix: Mapped[str] = mapped_column(String(12), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("app_user.id"), index=True)
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
