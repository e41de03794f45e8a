"""Request plumbing for the command loop's own routers: runtime, session, user, page rendering.

The import-linter contract "The command loop imports neither application" keeps
grassroots.command from importing grassroots.web, so the shared pieces come from
grassroots.plumbing (as grassroots.web.deps's do); this module adds the command loop's own.
Errors raised here are rendered by the app's handlers (a signed-out visitor to a page is sent
to log in).
"""

from __future__ import annotations

from typing import Any, cast

from fastapi import Request
from fastapi.responses import HTMLResponse

from grassroots.command.states import Actor
from grassroots.kernel.auth.models import User
from grassroots.plumbing import ClientIp as ClientIp
from grassroots.plumbing import CurrentUser as CurrentUser
from grassroots.plumbing import LanguageDep as LanguageDep
from grassroots.plumbing import RuntimeDep as RuntimeDep
from grassroots.plumbing import SessionDep as SessionDep
from grassroots.plumbing import get_current_user as get_current_user
from grassroots.plumbing import get_runtime as get_runtime
from grassroots.plumbing import get_session as get_session
from grassroots.plumbing import language_of as language_of
from grassroots.plumbing import page_context
from grassroots.plumbing import require_any as require_any


def as_actor(user: User) -> Actor:
    """A signed-in user as the actions' Actor.

    A User has id, username and role; mypy only cannot see that SQLAlchemy's Mapped[]
    attributes read as plain values, so the cast states what holds at run time.
    """
    return cast(Actor, user)


def render(request: Request, template: str, status_code: int = 200,
           **values: Any) -> HTMLResponse:
    """A page with the context every template expects (as grassroots.web.templating gives)."""
    context = page_context(request, **values)
    response: HTMLResponse = request.app.state.templates.TemplateResponse(
        request, template, context, status_code=status_code)
    return response
