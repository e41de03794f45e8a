"""Request plumbing shared by every router: the runtime, a DB session, the user, page context.

grassroots.web.deps and grassroots.command.request_deps both serve these; they live here, below
both, because the import-linter contract "The command loop imports neither application" keeps
grassroots.command from importing grassroots.web. They read what grassroots.web.auth's
middleware puts on request.state (user, csrf_token, language) and app.state (runtime).

The small dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency in the
thread pool, one hop per dependency per request, and these do no I/O. get_session stays `def`,
since closing a session may talk to the database.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, Any, cast

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from grassroots.db import REQUEST_SESSION_ATTR, take_request_session
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Permission, has_permission
from grassroots.kernel.errors import NotAuthenticated, PermissionDenied
from grassroots.kernel.i18n import DEFAULT_LANGUAGE, translate
from grassroots.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    return cast(Runtime, request.app.state.runtime)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def release_request_session(request: Request) -> None:
    """Close the session the sign-in check left for this request, if no session dependency
    took it over, so that its database connection goes back to the pool: after the route (the
    auth middleware), or before a coroutine route that does without it waits (an idle
    connection held per waiting request would drain the pool)."""
    session = getattr(request.state, REQUEST_SESSION_ATTR, None)
    if isinstance(session, Session):
        setattr(request.state, REQUEST_SESSION_ATTR, None)
        await run_in_threadpool(session.close)


def get_session(request: Request, runtime: RuntimeDep) -> Iterator[Session]:
    """A session per request; actions commit their own transaction, so we only close here.

    It is the one the auth middleware looked the bearer token up in, when there is one.
    """
    with take_request_session(request.state, runtime.session_factory) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def language_of(request: Request) -> str:
    """The language the auth middleware negotiated for this request."""
    return str(getattr(request.state, "language", None) or DEFAULT_LANGUAGE)


async def get_language(request: Request) -> str:
    return language_of(request)


LanguageDep = Annotated[str, Depends(get_language)]


async def get_current_user(request: Request) -> User:
    """The signed-in user, put on request.state by the auth middleware (session or API token)."""
    user = getattr(request.state, "user", None)
    if user is None:
        raise NotAuthenticated()
    return cast(User, user)


CurrentUser = Annotated[User, Depends(get_current_user)]


async def client_ip(request: Request) -> str | None:
    """The peer address for audit rows (a proxy in front must pass the real one through)."""
    return request.client.host if request.client else None


ClientIp = Annotated[str | None, Depends(client_ip)]


def require_any(*permissions: Permission) -> Callable[..., Awaitable[User]]:
    """A dependency returning the signed-in user if their role grants any of `permissions`."""

    async def check(user: CurrentUser) -> User:
        if not any(has_permission(user.role, permission) for permission in permissions):
            raise PermissionDenied()
        return user

    return check


def page_context(request: Request, **values: Any) -> dict[str, Any]:
    """Context for every page: the language, a `_` translator, the user and the CSRF token."""
    language = language_of(request)
    context: dict[str, Any] = {
        "request": request,
        "lang": language,
        "_": lambda message_id, **params: translate(message_id, language, **params),
        "user": getattr(request.state, "user", None),
        "csrf_token": getattr(request.state, "csrf_token", ""),
        "settings": request.app.state.runtime.settings,
    }
    context.update(values)
    return context
