"""Request plumbing for the command loop's own routers: runtime, session, user, page rendering.

grassroots.web.deps offers the same to the rest of the app, but the import-linter contract "The
command loop imports neither application" keeps grassroots.command from importing grassroots.web.
These read the very request.state that grassroots.web.auth's middleware fills (user, csrf_token,
language) and app.state (runtime, templates), so they behave the same; errors raised here are
rendered by the app's handlers (a signed-out visitor to a page is sent to log in).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, Any, cast

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from grassroots.command.states import Actor
from grassroots.db import take_request_session
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Permission, has_permission
from grassroots.kernel.errors import NotAuthenticated, PermissionDenied
from grassroots.kernel.i18n import DEFAULT_LANGUAGE, translate
from grassroots.runtime import Runtime

# The small dependencies here are `async def` on purpose: FastAPI runs a plain `def` dependency
# in the thread pool, one hop per dependency per request, and these do no I/O. get_session
# stays `def`, since closing a session may talk to the database.


async def get_runtime(request: Request) -> Runtime:
    return cast(Runtime, request.app.state.runtime)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(request: Request, runtime: RuntimeDep) -> Iterator[Session]:
    """A session per request; actions commit their own transaction, so we only close here.

    It is the one the auth middleware looked the bearer token up in, when there is one.
    """
    with take_request_session(request.state, runtime.session_factory) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def language_of(request: Request) -> str:
    return str(getattr(request.state, "language", None) or DEFAULT_LANGUAGE)


async def get_language(request: Request) -> str:
    return language_of(request)


LanguageDep = Annotated[str, Depends(get_language)]


async def get_current_user(request: Request) -> User:
    user = getattr(request.state, "user", None)
    if user is None:
        raise NotAuthenticated()
    return cast(User, user)


CurrentUser = Annotated[User, Depends(get_current_user)]


def as_actor(user: User) -> Actor:
    """A signed-in user as the actions' Actor.

    A User has id, username and role; mypy only cannot see that SQLAlchemy's Mapped[]
    attributes read as plain values, so the cast states what holds at run time.
    """
    return cast(Actor, user)


async def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


ClientIp = Annotated[str | None, Depends(client_ip)]


def require_any(*permissions: Permission) -> Callable[..., Awaitable[User]]:
    """A dependency returning the signed-in user if their role grants any of `permissions`."""

    async def check(user: CurrentUser) -> User:
        if not any(has_permission(user.role, permission) for permission in permissions):
            raise PermissionDenied()
        return user

    return check


def render(request: Request, template: str, status_code: int = 200,
           **values: Any) -> HTMLResponse:
    """A page with the context every template expects (as grassroots.web.templating gives)."""
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
    response: HTMLResponse = request.app.state.templates.TemplateResponse(
        request, template, context, status_code=status_code)
    return response
