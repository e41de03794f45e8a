"""Annotated dependencies shared by every router: the runtime, a DB session, the language, the user.

The user comes from request.state, which grassroots.web.auth's middleware fills per request.
The pieces the command loop needs too live in grassroots.plumbing and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, cast

from fastapi import Depends, Request

from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Permission
from grassroots.kernel.i18n import negotiate
from grassroots.plumbing import ClientIp as ClientIp
from grassroots.plumbing import CurrentUser as CurrentUser
from grassroots.plumbing import RuntimeDep as RuntimeDep
from grassroots.plumbing import SessionDep as SessionDep
from grassroots.plumbing import client_ip as client_ip
from grassroots.plumbing import get_current_user as get_current_user
from grassroots.plumbing import get_runtime as get_runtime
from grassroots.plumbing import get_session as get_session
from grassroots.plumbing import require_any


def get_language(request: Request) -> str:
    cached = getattr(request.state, "language", None)
    if cached:
        return str(cached)
    language = negotiate(request.headers.get("accept-language"), request.query_params.get("lang")
                         or request.cookies.get("lang"))
    request.state.language = language
    return language


LanguageDep = Annotated[str, Depends(get_language)]


def get_optional_user(request: Request) -> User | None:
    """The signed-in user, or None for an anonymous visitor (public pages)."""
    return cast(User | None, getattr(request.state, "user", None))


OptionalUser = Annotated[User | None, Depends(get_optional_user)]


def require_permission(permission: Permission) -> Callable[..., Awaitable[User]]:
    """A dependency that returns the user if their role grants `permission`, else 403."""
    return require_any(permission)


def require_any_permission(*permissions: Permission) -> Callable[..., Awaitable[User]]:
    """A dependency that returns the user if their role grants any of `permissions`, else 403."""
    return require_any(*permissions)
