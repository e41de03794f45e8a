"""The alarm list: JSON at /api/v1/irrigation/alarms, a page at /irrigation/alarms, acknowledge.

Reading needs irrigation.read; acknowledging needs irrigation.dispatch (the page's form posts
its csrf_token; an API client sends the X-CSRF-Token header or uses a bearer token).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel

from grassroots.command.states import Actor
from grassroots.irrigation.alarm_models import LIVE_STATES, AlarmState
from grassroots.irrigation.alarms import (
    MAX_LIST,
    AlarmRow,
    acknowledge_alarm,
    list_alarms,
    open_alarm_counts,
)
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Permission, has_permission
from grassroots.kernel.clock import to_display
from grassroots.web.deps import ClientIp, RuntimeDep, SessionDep, require_permission
from grassroots.web.templating import page_context

router = APIRouter(tags=["irrigation alarms"])

Reader = Annotated[User, Depends(require_permission(Permission.IRRIGATION_READ))]
Dispatcher = Annotated[User, Depends(require_permission(Permission.IRRIGATION_DISPATCH))]
PAGE_PATH = "/irrigation/alarms"


class StateFilter(StrEnum):
    LIVE = "live"  # open or acknowledged
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    CLEARED = "cleared"
    ALL = "all"


_STATES: dict[StateFilter, tuple[AlarmState, ...]] = {
    StateFilter.LIVE: LIVE_STATES,
    StateFilter.OPEN: (AlarmState.OPEN,),
    StateFilter.ACKNOWLEDGED: (AlarmState.ACKNOWLEDGED,),
    StateFilter.CLEARED: (AlarmState.CLEARED,),
    StateFilter.ALL: tuple(AlarmState),
}


class AlarmOut(BaseModel):
    id: int
    structure: str
    structure_name: str
    structure_kind: str
    kind: str
    state: str
    raised_at: datetime
    cleared_at: datetime | None
    value: float | None
    threshold: float | None
    clear_value: float | None
    incident_id: int | None
    incident_number: str | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    version: int


class AlarmsOut(BaseModel):
    count: int
    alarms: list[AlarmOut]


def _out(row: AlarmRow) -> AlarmOut:
    a = row.alarm
    return AlarmOut(
        id=a.id, structure=row.structure_code, structure_name=row.structure_name,
        structure_kind=row.structure_kind, kind=str(a.kind), state=str(a.state),
        raised_at=a.raised_at, cleared_at=a.cleared_at, value=a.value, threshold=a.threshold,
        clear_value=a.clear_value, incident_id=a.incident_id,
        incident_number=row.incident_number, acknowledged_at=a.acknowledged_at,
        acknowledged_by=a.acknowledged_by, version=a.version)


@router.get("/api/v1/irrigation/alarms", response_model=AlarmsOut)
def alarms_json(
    session: SessionDep,
    _user: Reader,
    state: Annotated[StateFilter, Query()] = StateFilter.LIVE,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 200,
) -> AlarmsOut:
    """Alarms, newest first: live ones (open or acknowledged) unless ``state`` says otherwise."""
    rows = list_alarms(session=session, states=_STATES[state], limit=limit)
    return AlarmsOut(count=len(rows), alarms=[_out(row) for row in rows])


@router.post("/api/v1/irrigation/alarms/{alarm_id}/acknowledge", response_model=AlarmOut)
def acknowledge_json(alarm_id: int, session: SessionDep, runtime: RuntimeDep, user: Dispatcher,
                     source_ip: ClientIp, version: int | None = None) -> AlarmOut:
    """Acknowledge an open alarm; ``version`` makes it compare-and-set against a stale view."""
    acknowledge_alarm(session=session, runtime=runtime, actor=_actor(user), alarm_id=alarm_id,
                      expected_version=version, source_ip=source_ip)
    return _out(list_alarms(session=session, states=tuple(AlarmState), alarm_id=alarm_id)[0])


def _actor(user: User) -> Actor:
    # A User reads as an Actor at run time; mypy cannot see through SQLAlchemy's Mapped[].
    return cast(Actor, user)


def _render(request: Request, template: str, **values: Any) -> HTMLResponse:
    response: HTMLResponse = request.app.state.templates.TemplateResponse(
        request, template, page_context(request, **values))
    return response


@router.get(PAGE_PATH, response_class=HTMLResponse)
def alarms_page(
    request: Request,
    session: SessionDep,
    user: Reader,
    state: Annotated[StateFilter, Query()] = StateFilter.LIVE,
) -> HTMLResponse:
    """The alarm list with its filter; dispatchers get an acknowledge button per open alarm."""
    rows = list_alarms(session=session, states=_STATES[state])
    return _render(request, "irrigation/alarms.html", rows=rows, state=state,
                   filters=list(StateFilter), counts=open_alarm_counts(session=session),
                   may_acknowledge=has_permission(user.role, Permission.IRRIGATION_DISPATCH),
                   to_display=to_display, active="alarms")


@router.post(PAGE_PATH + "/{alarm_id}/acknowledge", include_in_schema=False)
def acknowledge_form(alarm_id: int, session: SessionDep, runtime: RuntimeDep, user: Dispatcher,
                     source_ip: ClientIp) -> RedirectResponse:
    """The page's acknowledge button (the form carries csrf_token); back to the list."""
    acknowledge_alarm(session=session, runtime=runtime, actor=_actor(user), alarm_id=alarm_id,
                      source_ip=source_ip)
    return RedirectResponse(PAGE_PATH, status_code=303)
