"""Annotated dependencies shared by every router: the runtime, a DB session, the language, the user.

The user comes from request.state, which grassroots.web.auth's middleware fills per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, cast

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from grassroots.db import take_request_session
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Permission, has_permission
from grassroots.kernel.errors import NotAuthenticated, PermissionDenied
from grassroots.kernel.i18n import negotiate
from grassroots.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(request: Request, runtime: RuntimeDep) -> Iterator[Session]:
    """A session per request; actions commit their own transaction, so we only close here.

    It is the one the auth middleware looked the bearer token up in, when there is one.
    """
    with take_request_session(request.state, runtime.session_factory) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_language(request: Request) -> str:
    cached = getattr(request.state, "language", None)
    if cached:
        return str(cached)
    language = negotiate(request.headers.get("accept-language"), request.query_params.get("lang")
                         or request.cookies.get("lang"))
    request.state.language = language
    return language


LanguageDep = Annotated[str, Depends(get_language)]


def get_current_user(request: Request) -> User:
    """The signed-in user, put on request.state by the auth middleware (session or API token)."""
    user = getattr(request.state, "user", None)
    if user is None:
        raise NotAuthenticated()
    return cast(User, user)


CurrentUser = Annotated[User, Depends(get_current_user)]


def get_optional_user(request: Request) -> User | None:
    """The signed-in user, or None for an anonymous visitor (public pages)."""
    return cast(User | None, getattr(request.state, "user", None))


OptionalUser = Annotated[User | None, Depends(get_optional_user)]


def client_ip(request: Request) -> str | None:
    """The peer address for audit rows (a proxy in front must pass the real one through)."""
    return request.client.host if request.client else None


ClientIp = Annotated[str | None, Depends(client_ip)]


def require_permission(permission: Permission) -> Callable[..., User]:
    """A dependency that returns the user if their role grants `permission`, else 403."""

    def check(user: CurrentUser) -> User:
        if not has_permission(user.role, permission):
            raise PermissionDenied()
        return user

    return check


def require_any_permission(*permissions: Permission) -> Callable[..., User]:
    """A dependency that returns the user if their role grants any of `permissions`, else 403."""

    def check(user: CurrentUser) -> User:
        if not any(has_permission(user.role, permission) for permission in permissions):
            raise PermissionDenied()
        return user

    return check
