"""The dispatcher's pages: the live workspace, an incident, the phone/110 entry form, the roster.

The workspace stays current without reloading: /command/events is a server-sent event stream
that polls the database's change stamp (queries.change_stamp) about once a second, so it works
with any number of web processes; on each change the page asks for the queue fragment again.
A stream ends after STREAM_MAX_S and the browser's EventSource reconnects by itself, sending
the last stamp it saw (Last-Event-ID) so nothing in between is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from grassroots.command import actions, queries
from grassroots.command.api import PoliceDeskDep
from grassroots.command.categories import AttributeSpec, attributes_of
from grassroots.command.context import current_calendar, current_locator
from grassroots.command.models import Incident, IncidentCategory, IncidentPhoto, Notice
from grassroots.command.request_deps import (
    ClientIp,
    LanguageDep,
    RuntimeDep,
    SessionDep,
    as_actor,
    render,
    require_any,
)
from grassroots.command.schemas import Crs, to_wgs84
from grassroots.command.states import (
    TRANSITIONS,
    Action,
    Channel,
    IncidentState,
    ResponderState,
    UnitType,
)
from grassroots.kernel.addresses.models import StandardAddress
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Permission, has_permission
from grassroots.kernel.clock import format_display
from grassroots.kernel.errors import GrassrootsError, ValidationFailed
from grassroots.kernel.i18n import translate
from grassroots.runtime import Runtime

router = APIRouter(include_in_schema=False)

Reader = Annotated[User, Depends(require_any(Permission.INCIDENTS_READ))]
Dispatcher = Annotated[User, Depends(require_any(Permission.INCIDENTS_DISPATCH))]

EVENT_POLL_S = 1.0  # how often a stream looks for changes
HEARTBEAT_S = 15.0  # a comment line keeps proxies from closing a quiet stream
STREAM_MAX_S = 300.0  # then the browser reconnects (and a worker is freed)
RETRY_MS = 2000  # how soon the browser reconnects
# The order the workspace shows the state counts in: the loop's way through, then the rest.
STATE_ORDER = (IncidentState.RECEIVED, IncidentState.REGISTERED, IncidentState.DISPATCHED,
               IncidentState.ACCEPTED, IncidentState.ON_SCENE, IncidentState.HANDLED,
               IncidentState.CHECKED, IncidentState.SENT_BACK, IncidentState.SUSPENDED,
               IncidentState.CLOSED, IncidentState.VOIDED)
# The map's view before the zones load: the demo street (Shuangfu, Jiangjin).
MAP_CENTRE = (29.285, 106.26)


def time_left(seconds: int | None, language: str) -> str:
    """12:34, 3:05:10 or "2 天 4 小时", signed by the caller's wording (left / over)."""
    if seconds is None:
        return ""
    left = abs(seconds)
    days, rest = divmod(left, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} 天 {hours} 小时" if language != "en" else f"{days} d {hours} h"
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


def _helpers(language: str) -> dict[str, Any]:
    return {"time_left": lambda s: time_left(s, language), "format_time": format_display,
            "notice_text": lambda n: notice_text(n, language)}


def _std_address_code(session: Session, incident: Incident) -> str | None:
    if incident.std_address_id is None:
        return None
    address = session.get(StandardAddress, incident.std_address_id)
    return address.code if address is not None else None


def notice_text(notice: Notice, language: str) -> str:
    """A stored notice in the reader's language, its times shown in Beijing time."""
    params: dict[str, Any] = json.loads(notice.params or "{}")
    for name in ("due_at",):
        if isinstance(params.get(name), str):
            with contextlib.suppress(ValueError):  # not a time after all: shown as stored
                params[name] = format_display(datetime.fromisoformat(params[name]),
                                              "%m-%d %H:%M")
    try:
        return translate(notice.message_id, language, **params)
    except (KeyError, IndexError):  # a message that names a parameter this notice lacks
        return translate(notice.message_id, language)


def _live_context(session: Session, runtime: Runtime, user: User,
                  language: str) -> dict[str, Any]:
    now = runtime.clock.now()
    queue = queries.dispatcher_queue(session=session, user=user, now=now)
    counts = queries.state_counts(session=session, user=user)
    responders = queries.responders_on_duty(session=session, user=user, at=now)
    markers = {
        "incidents": [{
            "id": item.incident.id, "number": item.incident.number,
            "lon": item.incident.lon, "lat": item.incident.lat,
            "title": item.incident.title, "urgency": item.incident.urgency,
            "level": item.level.value if item.level else "none",
            "state": item.incident.state.value,
        } for item in queue if item.incident.lon is not None],
        "responders": [{
            "name": r.display_name, "lon": r.lon, "lat": r.lat, "state": r.state.value,
            "stale": r.position_stale, "zone": r.zone_name,
        } for r in responders if r.lon is not None],
    }
    return {"queue": queue, "counts": counts, "state_order": STATE_ORDER, "markers": markers,
            "stamp": queries.change_stamp(session=session), "now": now,
            "responders_total": len(responders),
            "responders_available": sum(r.state == ResponderState.AVAILABLE
                                        for r in responders),
            **_helpers(language)}


@router.get("/command", response_class=HTMLResponse)
def workspace(request: Request, user: Reader, session: SessionDep, runtime: RuntimeDep,
              language: LanguageDep) -> Response:
    """The big-screen workspace: counts, the live queue and the map."""
    context = _live_context(session, runtime, user, language)
    return render(request, "command/workspace.html", user=user,
                  map_config={"tileUrl": runtime.settings.tile_url or "",
                              "centre": MAP_CENTRE},
                  can_dispatch=has_permission(user.role, Permission.INCIDENTS_DISPATCH),
                  **context)


@router.get("/command/queue", response_class=HTMLResponse)
def queue_fragment(request: Request, user: Reader, session: SessionDep, runtime: RuntimeDep,
                   language: LanguageDep) -> Response:
    """The live part of the workspace, fetched again on every change."""
    return render(request, "command/_live.html", user=user,
                  **_live_context(session, runtime, user, language))


def _stamp(runtime: Runtime) -> str:
    with runtime.session_factory() as session:
        return queries.change_stamp(session=session)


async def _changes(request: Request, runtime: Runtime, last: str | None,
                   max_s: float) -> AsyncIterator[str]:
    yield f"retry: {RETRY_MS}\n\n"
    started = quiet_since = time.monotonic()
    while time.monotonic() - started < max_s:
        if await request.is_disconnected():
            return
        stamp = await run_in_threadpool(_stamp, runtime)
        if stamp != last:
            # The first answer to a fresh page says where things stand; later ones are changes.
            kind = "hello" if last is None else "change"
            yield f"id: {stamp}\nevent: {kind}\ndata: {stamp}\n\n"
            last, quiet_since = stamp, time.monotonic()
        elif time.monotonic() - quiet_since >= HEARTBEAT_S:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(EVENT_POLL_S)


@router.get("/command/events")
async def events(request: Request, user: Reader, runtime: RuntimeDep,
                 since: Annotated[str | None, Query(max_length=80)] = None,
                 max_s: Annotated[float, Query(ge=1, le=STREAM_MAX_S)] = STREAM_MAX_S,
                 ) -> StreamingResponse:
    """text/event-stream: `change` whenever the command loop's data changes.

    `since` (or the Last-Event-ID header a reconnecting browser sends) is the stamp the page
    was drawn from: if things moved on meanwhile, a change comes at once.
    """
    # A reconnecting browser's Last-Event-ID is newer than the `since` in the URL it reuses.
    last = request.headers.get("last-event-id") or since or None
    return StreamingResponse(_changes(request, runtime, last, max_s),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# --- one incident ------------------------------------------------------------------------------


def _incident_context(session: Session, runtime: Runtime, user: User, incident: Incident,
                      language: str) -> dict[str, Any]:
    now = runtime.clock.now()
    view = queries.incident_view(session=session, crypto=runtime.crypto, incident=incident,
                                 now=now)
    allowed = queries.allowed_steps(session=session, incident=incident, user=user)
    reason_required = {name for name in allowed
                        if (action := _as_action(name)) and TRANSITIONS[action].reason_required}
    candidates = []
    if incident.needs_duplicate_review:
        candidates = [c for c in queries.duplicate_candidates(
            session=session, category=view.category, lon=incident.lon, lat=incident.lat,
            at=incident.received_at, exclude_id=incident.id)
            if queries.incident_visible(session, user, c)]
    on_duty = []
    if "dispatch" in allowed and incident.zone_id is not None:
        on_duty = [r for r in queries.responders_on_duty(session=session, user=user, at=now)
                   if r.zone_id == incident.zone_id]
    return {
        "view": view, "incident": incident, "allowed": allowed,
        "reason_required": reason_required, "timeline": queries.timeline(
            session=session, incident_id=incident.id),
        "candidates": candidates, "on_duty": on_duty, "unit_types": list(UnitType),
        "open_reinforcements": [r for r in view.reinforcements if r.arrived_at is None],
        "can_reveal": has_permission(user.role, Permission.PERSONAL_DATA_UNMASK)
        and incident.reporter_phone_enc is not None,
        "photos": session.scalars(select(IncidentPhoto)
                                  .where(IncidentPhoto.incident_id == incident.id)
                                  .order_by(IncidentPhoto.id)).all(),
        "notices": queries.notices_of(session=session, incident_id=incident.id),
        "std_address_code": _std_address_code(session, incident),
        "stamp": queries.change_stamp(session=session), **_helpers(language)}


def _as_action(name: str) -> Action | None:
    try:
        return Action(actions.STEP_ACTIONS.get(name, name))
    except ValueError:
        return None


def _incident_page(request: Request, session: Session, runtime: Runtime, user: User,
                   incident_id: int, language: str, status_code: int = 200,
                   **values: Any) -> HTMLResponse:
    incident = queries.incident_for(session=session, user=user, incident_id=incident_id)
    return render(request, "command/incident.html", status_code=status_code, user=user,
                  map_config={"tileUrl": runtime.settings.tile_url or "",
                              "centre": MAP_CENTRE},
                  **_incident_context(session, runtime, user, incident, language), **values)


@router.get("/command/incidents/{incident_id}", response_class=HTMLResponse)
def incident_page(request: Request, incident_id: int, user: Reader, session: SessionDep,
                  runtime: RuntimeDep, language: LanguageDep) -> Response:
    return _incident_page(request, session, runtime, user, incident_id, language)


@router.get("/command/incidents/{incident_id}/status", response_class=HTMLResponse)
def incident_status(request: Request, incident_id: int, user: Reader, session: SessionDep,
                    runtime: RuntimeDep, language: LanguageDep) -> Response:
    """The incident's clocks, people and timeline, fetched again when something changes."""
    incident = queries.incident_for(session=session, user=user, incident_id=incident_id)
    return render(request, "command/_incident_status.html", user=user,
                  **_incident_context(session, runtime, user, incident, language))


def _optional_int(value: str, field: str) -> int | None:
    text = value.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValidationFailed("command.error.field_required", field=field) from None


def _optional_float(value: str, field: str) -> float | None:
    text = value.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValidationFailed("command.error.field_required", field=field) from None


def _original_id(session: Session, user: User, number: str) -> int | None:
    text = number.strip()
    if not text:
        return None
    original = queries.get_incident_by_number(session=session, number=text)
    if original is None or not queries.incident_visible(session, user, original):
        raise ValidationFailed("command.error.bad_original")
    return original.id


@router.post("/command/incidents/{incident_id}/actions/{action}")
def incident_action(
    request: Request,
    incident_id: int,
    action: str,
    user: Reader,
    session: SessionDep,
    runtime: RuntimeDep,
    language: LanguageDep,
    ip: ClientIp,
    desk: PoliceDeskDep,
    reason: Annotated[str, Form(max_length=2000)] = "",
    expected_version: Annotated[str, Form()] = "",
    user_ids: Annotated[list[int] | None, Form()] = None,
    unit_type: Annotated[str, Form()] = "",
    request_id: Annotated[str, Form()] = "",
    satisfied: Annotated[str, Form()] = "",
    working_days: Annotated[str, Form()] = "",
    original_number: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    """A button on the incident page; an error comes back inline on the same page."""
    incident = queries.incident_for(session=session, user=user, incident_id=incident_id)
    try:
        step = actions.StepRequest(
            reason=reason.strip() or None,
            expected_version=_optional_int(expected_version, "expected_version"),
            user_ids=tuple(user_ids or ()), unit_type=unit_type or None,
            request_id=_optional_int(request_id, "request_id"),
            satisfied={"yes": True, "no": False}.get(satisfied),
            working_days=_optional_int(working_days, "working_days"),
            original_id=_original_id(session, user, original_number))
        actions.take_action(session=session, runtime=runtime, actor=as_actor(user),
                            incident_id=incident.id, action=action, request=step,
                            calendar=current_calendar(session), police_desk=desk,
                            source_ip=ip)
    except GrassrootsError as exc:
        session.rollback()
        return _incident_page(request, session, runtime, user, incident.id, language,
                              status_code=exc.status_code, error=exc.message(language),
                              failed_action=action, entered_reason=reason)
    return RedirectResponse(f"/command/incidents/{incident.id}", status_code=303)


@router.post("/command/incidents/{incident_id}/reveal-phone", response_class=HTMLResponse)
def reveal_phone(request: Request, incident_id: int, user: Reader, session: SessionDep,
                 runtime: RuntimeDep, language: LanguageDep, ip: ClientIp,
                 reason: Annotated[str, Form(max_length=500)] = "") -> Response:
    """Show the full number once, on this page only (never in a URL), and log why."""
    incident = queries.incident_for(session=session, user=user, incident_id=incident_id)
    try:
        phone = actions.reveal_reporter_phone(session=session, runtime=runtime,
                                              actor=as_actor(user), incident_id=incident.id,
                                              reason=reason, source_ip=ip)
    except GrassrootsError as exc:
        session.rollback()
        return _incident_page(request, session, runtime, user, incident.id, language,
                              status_code=exc.status_code, reveal_error=exc.message(language))
    return _incident_page(request, session, runtime, user, incident.id, language,
                          revealed_phone=phone)


# --- the entry form: phone calls and 110 hand-overs --------------------------------------------

_FORM_FIELDS = ("channel", "police_ref", "reporter_phone", "reporter_name", "category_code",
                "lon", "lat", "crs", "address_text", "address_id", "description", "urgency")
# Answers to a category's extra questions come as attr.<category code>.<question code>, so the
# questions of the categories not chosen (hidden on the page) never mix in.
ATTRIBUTE_PREFIX = "attr."
_ATTRIBUTE_ERRORS = {"command.error.attribute_required": "command.new.attribute_required",
                     "command.error.bad_attribute": "command.new.bad_attribute"}


def _questions(groups: list[tuple[str, str, list[IncidentCategory]]]
               ) -> dict[str, tuple[AttributeSpec, ...]]:
    return {c.code: specs for _, _, categories in groups for c in categories
            if (specs := attributes_of(c))}


def _entry_page(request: Request, session: Session, runtime: Runtime, user: User,
                values: dict[str, Any], status_code: int = 200,
                error: str | None = None) -> HTMLResponse:
    groups = queries.categories_by_major(session=session)
    return render(request, "command/new.html", status_code=status_code, user=user,
                  values=values, error=error, groups=groups, questions=_questions(groups),
                  channels=[Channel.PHONE, Channel.POLICE_110],
                  map_config={"tileUrl": runtime.settings.tile_url or "",
                              "centre": MAP_CENTRE})


@router.get("/command/new", response_class=HTMLResponse)
def entry_form(request: Request, user: Dispatcher, session: SessionDep,
               runtime: RuntimeDep) -> Response:
    # The token makes the submission idempotent: a double click or a resend creates one.
    values: dict[str, Any] = dict.fromkeys(_FORM_FIELDS, "") | {
        "channel": Channel.PHONE.value, "crs": Crs.WGS84.value,
        "form_token": secrets.token_urlsafe(16), "answers": {}}
    return _entry_page(request, session, runtime, user, values)


def _answers(form: Any, category_code: str) -> dict[str, Any]:
    """The chosen category's answers: one value, or a list for several (multivaluelist)."""
    prefix = f"{ATTRIBUTE_PREFIX}{category_code}."
    answers: dict[str, Any] = {}
    for key in dict.fromkeys(form.keys()):
        if not key.startswith(prefix):
            continue
        given = [str(v).strip() for v in form.getlist(key) if str(v).strip()]
        if given:
            answers[key[len(prefix):]] = given if len(given) > 1 else given[0]
    return answers


def _question_text(session: Session, exc: ValidationFailed, language: str) -> str:
    """An attribute error names the question as the form shows it, not by its code."""
    mapped = _ATTRIBUTE_ERRORS.get(exc.message_id)
    code = exc.params.get("code")
    if mapped is None or code is None:
        return exc.message(language)
    for _, _, categories in queries.categories_by_major(session=session):
        for category in categories:
            for spec in attributes_of(category):
                if spec.code == code:
                    text = spec.description_en if language == "en" and spec.description_en \
                        else spec.description
                    return translate(mapped, language, question=text)
    return exc.message(language)


# The longest each field may be, as the API's schema allows (the description: intake checks).
_FIELD_LIMITS = {"form_token": 120, "channel": 20, "police_ref": 60, "reporter_phone": 40,
                 "reporter_name": 60, "category_code": 60, "lon": 40, "lat": 40, "crs": 10,
                 "address_text": 300, "address_id": 120, "urgency": 2}


def _create_from_form(request: Request, session: Session, runtime: Runtime, user: User,
                      language: str, ip: str | None, values: dict[str, Any]) -> Response:
    try:
        for name, limit in _FIELD_LIMITS.items():
            if len(values[name]) > limit:
                raise ValidationFailed("command.error.field_too_long", field=name, limit=limit)
        try:
            chosen_crs = Crs(values["crs"] or Crs.WGS84.value)
        except ValueError:
            raise ValidationFailed("command.error.bad_location") from None
        lon, lat = to_wgs84(_optional_float(values["lon"], "lon"),
                            _optional_float(values["lat"], "lat"), chosen_crs)
        if not values["category_code"]:
            raise ValidationFailed("command.error.category_required")
        result = actions.enter_incident(
            session=session, runtime=runtime, actor=user, channel=values["channel"],
            category_code=values["category_code"], calendar=current_calendar(session),
            locator=current_locator(session), lon=lon, lat=lat,
            address_text=values["address_text"].strip() or None,
            address_id=values["address_id"].strip() or None,
            description=values["description"].strip(),
            reporter_phone=values["reporter_phone"].strip() or None,
            reporter_name=values["reporter_name"].strip() or None,
            attributes=values["answers"], urgency=_optional_int(values["urgency"], "urgency"),
            idempotency_key=values["form_token"] or None, police_ref=values["police_ref"],
            source_ip=ip, fingerprint=actions.request_fingerprint(
                {name: values[name] for name in (*_FORM_FIELDS, "answers")}))
    except ValidationFailed as exc:
        session.rollback()
        return _entry_page(request, session, runtime, user, values, status_code=422,
                           error=_question_text(session, exc, language))
    except GrassrootsError as exc:
        session.rollback()
        return _entry_page(request, session, runtime, user, values,
                           status_code=exc.status_code, error=exc.message(language))
    return RedirectResponse(f"/command/incidents/{result.incident.id}", status_code=303)


@router.post("/command/new")
async def entry_submit(request: Request, user: Dispatcher, session: SessionDep,
                       runtime: RuntimeDep, language: LanguageDep, ip: ClientIp) -> Response:
    """Create the incident and land on its page; the form token makes a resend harmless."""
    form = await request.form()
    values: dict[str, Any] = {name: str(form.get(name) or "")
                              for name in (*_FORM_FIELDS, "form_token")}
    values["channel"] = values["channel"] or Channel.PHONE.value
    values["form_token"] = values["form_token"] or secrets.token_urlsafe(16)
    values["answers"] = _answers(form, values["category_code"])
    return await run_in_threadpool(_create_from_form, request, session, runtime, user,
                                   language, ip, values)


# --- notices -----------------------------------------------------------------------------------

NOTICES_SHOWN = 200
_SHOW = "^(unread|all)$"  # which notices the inbox lists


@router.get("/command/notices", response_class=HTMLResponse)
def notices_page(request: Request, user: Reader, session: SessionDep, language: LanguageDep,
                 show: Annotated[str, Query(pattern=_SHOW)] = "unread",
                 marked: Annotated[int | None, Query(ge=0)] = None) -> Response:
    """The user's warnings, reminders and supervision notices (催办/督办), newest first: those
    addressed to them by name, and to their role within their data scope."""
    notices = queries.notices_for(session=session, user=user, unread_only=show == "unread",
                                  limit=NOTICES_SHOWN)
    numbers = dict(session.execute(select(Incident.id, Incident.number).where(
        Incident.id.in_({n.incident_id for n in notices}))).tuples().all()) if notices else {}
    return render(request, "command/notices.html", user=user, notices=notices,
                  numbers=numbers, show=show, marked=marked,
                  notice_text=lambda n: notice_text(n, language))


@router.post("/command/notices/read")
def mark_notices_read(request: Request, user: Reader, session: SessionDep, runtime: RuntimeDep,
                      ip: ClientIp,
                      notice_id: Annotated[list[str] | None, Form(max_length=12)] = None,
                      show: Annotated[str, Form(pattern=_SHOW)] = "unread"
                      ) -> Response:
    """已阅: the notices named (one, or every one the page showed); back to the list."""
    wanted = [_optional_int(value, "notice_id") for value in notice_id or []]
    count = actions.mark_notices_read(session=session, runtime=runtime, actor=user,
                                      notice_ids=[n for n in wanted if n is not None],
                                      source_ip=ip)
    return RedirectResponse(f"/command/notices?show={show}&marked={count}", status_code=303)


# --- the roster ------------------------------------------------------------------------------


@router.get("/command/duty", response_class=HTMLResponse)
def duty_page(request: Request, user: Reader, session: SessionDep, runtime: RuntimeDep,
              language: LanguageDep) -> Response:
    """Today's shifts per zone (Beijing day), who is on now first, with states and positions."""
    now = runtime.clock.now()
    shifts = queries.duty_shifts_around(session=session, user=user, at=now)
    by_zone: dict[int, list[queries.ResponderView]] = {}
    for shift in shifts:
        by_zone.setdefault(shift.zone_id, []).append(shift)
    zones = []
    for zone_id, rows in by_zone.items():
        rows.sort(key=lambda s: (not _on_now(s, now), s.starts_at, s.display_name))
        on_now = {s.user_id: s for s in rows if _on_now(s, now)}
        zones.append({"id": zone_id, "name": rows[0].zone_name, "shifts": rows,
                      "on_now": len(on_now),
                      "available": sum(s.state == ResponderState.AVAILABLE
                                       for s in on_now.values())})
    return render(request, "command/duty.html", user=user, zones=zones, now=now,
                  today=format_display(now, "%Y-%m-%d"), on_now=_on_now, **_helpers(language))


def _on_now(shift: queries.ResponderView, now: datetime) -> bool:
    return shift.starts_at <= now < shift.ends_at
