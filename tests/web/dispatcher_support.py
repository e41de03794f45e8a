"""Helpers for the incidents API and dispatcher page tests: the app with the command routers,
a street with people on duty, bearer tokens and the real login form."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session
from tests.integration.command_support import (
    A_LAT,
    A_LON,
    B_LAT,
    B_LON,
    Area,
    load_categories,
    make_area,
    offset,
    put_on_duty,
)

from grassroots.command.police import FakePoliceDesk
from grassroots.command.states import UnitType
from grassroots.kernel.auth import actions as auth_actions
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Role
from grassroots.kernel.clock import FixedClock
from grassroots.kernel.regions.models import Region
from grassroots.runtime import Runtime

PASSWORD = "Spring-Field-42"


def with_command_routes(app: FastAPI) -> FastAPI:
    """The app with the incidents API and the dispatcher pages, whether or not app.py has them."""
    from grassroots.command import api, views

    paths = {getattr(route, "path", None) for route in app.routes}
    if "/api/v1/incidents" not in paths:
        app.include_router(api.router)
    if "/command" not in paths:
        app.include_router(views.router)
    app.state.police_desk = FakePoliceDesk()
    return app


def person(session: Session, runtime: Runtime, username: str, role: Role,
           scope: Region | None) -> User:
    """A user who can sign in with PASSWORD, scoped to `scope` (None: everything)."""
    return auth_actions.create_user(session=session, actor="cli", username=username,
                                    display_name=username.title(), role=role,
                                    scope_code=scope.code if scope else None,
                                    password=PASSWORD, runtime=runtime)


def bearer(session: Session, runtime: Runtime, user: User) -> dict[str, str]:
    _token, plaintext = auth_actions.create_api_token(session=session, runtime=runtime,
                                                      actor=user, name="test")
    return {"Authorization": f"Bearer {plaintext}"}


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def sign_in(client: TestClient, username: str) -> None:
    """Through the real login form, CSRF token and all."""
    token = csrf_from(client.get("/login").text)
    response = client.post("/login", data={"username": username, "password": PASSWORD,
                                           "csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303, response.text


@dataclass
class Street:
    """Two zones with a grid each; a responder on duty in each zone and the people around."""

    area: Area
    grid_a: Region
    grid_b: Region
    dispatcher: User
    leader: User
    responder_a: User
    responder_b: User
    enforcer_a: User
    grid_worker_a: User
    grid_worker_b: User
    viewer_a: User
    leader_a: User
    zone_leader_a: User


def make_street(session: Session, runtime: Runtime, clock: FixedClock) -> Street:
    load_categories(session, runtime)
    area = make_area(session)
    grid_a, grid_b = area.regions[4], area.regions[5]
    now = clock.now()
    street = Street(
        area=area, grid_a=grid_a, grid_b=grid_b,
        dispatcher=person(session, runtime, "dispatcher", Role.DISPATCHER, area.street),
        leader=person(session, runtime, "leader", Role.STREET_LEADER, area.street),
        responder_a=person(session, runtime, "responder_a", Role.ZONE_RESPONDER, area.zone_a),
        responder_b=person(session, runtime, "responder_b", Role.ZONE_RESPONDER, area.zone_b),
        enforcer_a=person(session, runtime, "enforcer_a", Role.ZONE_RESPONDER, area.zone_a),
        grid_worker_a=person(session, runtime, "gridworker_a", Role.GRID_WORKER, grid_a),
        grid_worker_b=person(session, runtime, "gridworker_b", Role.GRID_WORKER, grid_b),
        viewer_a=person(session, runtime, "viewer_a", Role.VIEWER, area.zone_a),
        leader_a=person(session, runtime, "leader_a", Role.STREET_LEADER, area.zone_a),
        zone_leader_a=person(session, runtime, "zone_leader_a", Role.ZONE_LEADER, area.zone_a),
    )
    put_on_duty(session, street.responder_a, area.zone_a, now,
                position=offset(A_LON, A_LAT, 120))
    put_on_duty(session, street.responder_b, area.zone_b, now,
                position=offset(B_LON, B_LAT, 150))
    put_on_duty(session, street.enforcer_a, area.zone_a, now,
                unit_type=UnitType.LAW_ENFORCEMENT, position=offset(A_LON, A_LAT, 600))
    return street


def garbage(lon: float = A_LON, lat: float = A_LAT, **extra: Any) -> dict[str, Any]:
    """A report body: exposed garbage (the zone team's work) at a point."""
    return {"category_code": "city_env.exposed_garbage", "lon": lon, "lat": lat,
            "description": "路边堆放生活垃圾", "reporter_phone": "13812345678",
            "reporter_name": "张三丰"} | extra
