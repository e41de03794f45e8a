"""Shared helpers for the irrigation tests: users by role, the seeded demo, the pages' app."""

from __future__ import annotations

import itertools

from fastapi import FastAPI
from sqlalchemy.orm import Session

from grassroots.irrigation import views
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Role
from grassroots.runtime import Runtime
from grassroots.web.deps import get_current_user

_counter = itertools.count(1)


def make_user(session: Session, runtime: Runtime, role: Role) -> User:
    """A committed user with the role; no password (these tests never sign in through a form)."""
    now = runtime.clock.now()
    user = User(username=f"{role.value}-{next(_counter)}", display_name="测试用户", role=role,
                password_hash="-", created_at=now, password_changed_at=now)
    session.add(user)
    session.commit()
    return user


def with_irrigation_routes(app: FastAPI) -> FastAPI:
    """The app with the irrigation router, unless the lead has already wired it in."""
    if not any(getattr(route, "path", None) == "/irrigation" for route in app.routes):
        app.include_router(views.router)
    return app


def sign_in(app: FastAPI, user: User) -> None:
    app.dependency_overrides[get_current_user] = lambda: user
