"""Annotated dependencies shared by every router: the runtime, a DB session, the language."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Permission, has_permission
from grassroots.kernel.errors import NotAuthenticated, PermissionDenied
from grassroots.kernel.i18n import negotiate
from grassroots.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    """A session per request; actions commit their own transaction, so we only close here."""
    with runtime.session_factory() as session:
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
    return user  # type: ignore[no-any-return]


CurrentUser = Annotated[User, Depends(get_current_user)]


def require_permission(permission: Permission) -> Callable[..., User]:
    """A dependency that returns the user if their role grants `permission`, else 403."""

    def check(user: CurrentUser) -> User:
        if not has_permission(user.role, permission):
            raise PermissionDenied()
        return user

    return check
