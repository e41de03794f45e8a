"""The incidents JSON API under /api/v1: report, list, read, act, responders, reveal a phone.

Every route needs a signed-in user (session or bearer token) and cuts its answer to the user's
data scope: an incident outside it is a 404, the same as one that does not exist. Errors come
back as {"error": {"code", "message"}} in the request's language (the app's error handlers).
"""

from __future__ import annotations

from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from grassroots.command import actions, queries
from grassroots.command.context import current_calendar
from grassroots.command.intake_writer import IntakeWriter
from grassroots.command.models import Incident, IncidentCategory
from grassroots.command.police import FakePoliceDesk, PoliceDesk
from grassroots.command.request_deps import (
    ClientIp,
    LanguageDep,
    RuntimeDep,
    SessionDep,
    as_actor,
    require_any,
)
from grassroots.command.schemas import (
    ActionIn,
    IncidentCreated,
    IncidentIn,
    IncidentOut,
    IncidentPage,
    PositionIn,
    ResponderOut,
    RevealIn,
    RevealOut,
    TransitionOut,
    to_wgs84,
)
from grassroots.command.states import IncidentState, ResponderState
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Permission
from grassroots.plumbing import release_request_session
from grassroots.runtime import Runtime

router = APIRouter(prefix="/api/v1", tags=["incidents"])

Reader = Annotated[User, Depends(require_any(Permission.INCIDENTS_READ))]
Reporter = Annotated[User, Depends(require_any(Permission.INCIDENTS_REPORT))]
Responder = Annotated[User, Depends(require_any(Permission.INCIDENTS_HANDLE))]
Unmasker = Annotated[User, Depends(require_any(Permission.PERSONAL_DATA_UNMASK))]
IDEMPOTENCY_KEY_MAX = 120
PAGE_MAX = 200

# The 110 desk when the deployment has not set app.state.police_desk: an in-process fake, since
# the police system is outside Grassroots (see command.police).
_DEFAULT_DESK = FakePoliceDesk()


def get_police_desk(request: Request) -> PoliceDesk:
    desk = getattr(request.app.state, "police_desk", None)
    return desk if desk is not None else _DEFAULT_DESK


PoliceDeskDep = Annotated[PoliceDesk, Depends(get_police_desk)]


async def get_intake_writer(request: Request) -> IntakeWriter:
    """The app's group-commit writer (see command.intake_writer)."""
    writer = getattr(request.app.state, "intake_writer", None)
    if writer is None:
        raise RuntimeError("create_app installs the intake writer")
    return cast(IntakeWriter, writer)


IntakeWriterDep = Annotated[IntakeWriter, Depends(get_intake_writer)]


def incident_out(session: Session, runtime: Runtime, incident_id: int, user: User,
                 language: str) -> IncidentOut:
    incident = queries.incident_for(session=session, user=user, incident_id=incident_id)
    return _out(session, runtime, incident, language)


def _out(session: Session, runtime: Runtime, incident: Incident, language: str,
         category: IncidentCategory | None = None) -> IncidentOut:
    view = queries.incident_view(session=session, crypto=runtime.crypto, incident=incident,
                                 now=runtime.clock.now(), category=category)
    return IncidentOut.of(view, language)


def _fresh_view(runtime: Runtime, result: actions.IntakeResult,
                region_names: dict[int, str]) -> queries.IncidentView:
    """The view of an incident this request created, from the intake's result."""
    assert result.category is not None
    return queries.build_incident_view(
        incident=result.incident, category=result.category, now=runtime.clock.now(),
        region_names=region_names, reporter_phone=result.reporter_phone,
        reporter_name=result.reporter_name, assignments=result.assignments,
        names=result.assigned_names,
        states=dict.fromkeys(result.assigned_user_ids, ResponderState.BUSY),
        deadlines=result.deadlines)


@router.post("/incidents", status_code=201, response_model=IncidentCreated)
async def create_incident(
    request: Request,
    body: IncidentIn,
    response: Response,
    user: Reporter,
    runtime: RuntimeDep,
    language: LanguageDep,
    ip: ClientIp,
    writer: IntakeWriterDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key",
                                                  max_length=IDEMPOTENCY_KEY_MAX)] = None,
) -> IncidentCreated | Response:
    """Report an incident; it is located, registered and dispatched in this request.

    Send an Idempotency-Key: a retry with the same key (same user) returns the first incident
    with 200 instead of 201; the same key with a different body is refused with 422.
    """
    # A coroutine, so that a report waiting for its batch (command.intake_writer) holds no
    # thread and no database connection: the event loop serves the others meanwhile. Its
    # receipt is stamped now, so its clocks count the wait for the batch too. (The usual
    # report is taken before it gets here, by command.api_fast, with these same helpers.)
    await release_request_session(request)
    entry = report_entry(body, user, ip, idempotency_key)
    call = actions.entry_call(**entry, received_at=runtime.clock.now())
    if call is None:  # a 110 hand-over, keyed by its reference: taken in a session of its own
        return await run_in_threadpool(_enter_here, runtime, language, response, entry,
                                       body.police_ref)
    result = await writer.submit_async(call)
    if not result.created:
        response.status_code = 200
    answer = created_answer(runtime, language, result)
    if answer is not None:
        return Response(answer, status_code=201, media_type="application/json")
    return await run_in_threadpool(answer_from_database, runtime, language, user, result)


def report_entry(body: IncidentIn, user: User, ip: str | None,
                 idempotency_key: str | None) -> dict[str, Any]:
    """actions.entry_call's (and enter_incident's) keywords for a report posted to the API."""
    lon, lat = to_wgs84(body.lon, body.lat, body.crs)
    return {
        "actor": user, "channel": body.channel, "category_code": body.category_code,
        "lon": lon, "lat": lat, "address_text": body.address_text, "address_id": body.address_id,
        "description": body.description, "reporter_phone": body.reporter_phone,
        "reporter_name": body.reporter_name, "attributes": body.attributes,
        "urgency": body.urgency, "idempotency_key": idempotency_key,
        "fingerprint": actions.request_fingerprint(body.model_dump(mode="json")),
        "source_ip": ip}


def created_answer(runtime: Runtime, language: str, result: actions.IntakeResult) -> bytes | None:
    """The 201 answer's JSON for an incident this request just created, built from what the
    intake knows; None when the answer needs the database (see answer_from_database)."""
    if not (result.created and result.region_names is not None and result.category is not None):
        return None
    # The incident this request just wrote and committed is known as it stands, with its
    # assignments and clocks, and incident_scope lets everyone see what they reported: the
    # answer is built from what the intake knows, with no re-read and no scope lookup. Built
    # from checked values, so written out as it stands: FastAPI would validate the whole
    # answer once more against IncidentCreated before writing it.
    out = IncidentOut.of(_fresh_view(runtime, result, result.region_names), language)
    return _created(out, result).model_dump_json().encode()


def _created(out: IncidentOut, result: actions.IntakeResult) -> IncidentCreated:
    # The fields of a validated IncidentOut, so construct (no second validation) is safe.
    return IncidentCreated.model_construct(
        **dict(out), created=result.created,
        duplicate_candidates=[d.number for d in result.duplicate_candidates])


def answer_from_database(runtime: Runtime, language: str, user: User,
            result: actions.IntakeResult) -> IncidentCreated:
    """The answer with what it needs read from the database: a retry's first incident, or the
    region names of a new one the cached index could not name."""
    with runtime.session_factory() as session:
        if result.created and result.category is not None:
            incident = result.incident
            names = result.region_names
            if names is None:
                names = queries.region_names(session, {
                    incident.zone_id, incident.grid_id, incident.micro_grid_id} - {None})
            return _created(IncidentOut.of(_fresh_view(runtime, result, names), language),
                            result)
        return _created(incident_out(session, runtime, result.incident.id, user, language),
                        result)


def _enter_here(runtime: Runtime, language: str, response: Response, entry: dict[str, Any],
                police_ref: str | None) -> IncidentCreated:
    with runtime.session_factory() as session:
        result = actions.enter_incident(session=session, runtime=runtime, calendar=None,
                                        locator=None, police_ref=police_ref, **entry)
    if not result.created:
        response.status_code = 200
    return answer_from_database(runtime, language, entry["actor"], result)


@router.get("/incidents", response_model=IncidentPage)
def list_incidents(
    user: Reader,
    session: SessionDep,
    runtime: RuntimeDep,
    language: LanguageDep,
    state: Annotated[list[IncidentState] | None, Query()] = None,
    category: Annotated[str | None, Query(max_length=60)] = None,
    zone: Annotated[int | None, Query(description="zone region id")] = None,
    urgency: Annotated[int | None, Query(ge=1, le=4)] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> IncidentPage:
    """Incidents in the user's data scope, newest first."""
    rows, total = queries.search_incidents(session=session, user=user, states=state,
                                           category_code=category, zone_id=zone,
                                           urgency=urgency, limit=limit, offset=offset)
    now = runtime.clock.now()
    items = [IncidentOut.of(queries.incident_view(session=session, crypto=runtime.crypto,
                                                  incident=row, now=now), language)
             for row in rows]
    return IncidentPage(items=items, total=total, limit=limit, offset=offset)


@router.get("/incidents/{incident_id}", response_model=IncidentOut)
def get_incident(incident_id: int, user: Reader, session: SessionDep, runtime: RuntimeDep,
                 language: LanguageDep) -> IncidentOut:
    return incident_out(session, runtime, incident_id, user, language)


@router.get("/incidents/{incident_id}/timeline", response_model=list[TransitionOut])
def get_timeline(incident_id: int, user: Reader, session: SessionDep) -> list[TransitionOut]:
    """Every transition, oldest first, with who took it and when."""
    incident = queries.incident_for(session=session, user=user, incident_id=incident_id)
    return [TransitionOut.of(entry)
            for entry in queries.timeline(session=session, incident_id=incident.id)]


@router.post("/incidents/{incident_id}/actions/{action}", response_model=IncidentOut)
def act(incident_id: int, action: str, body: ActionIn, user: Reader, session: SessionDep,
        runtime: RuntimeDep, language: LanguageDep, ip: ClientIp,
        desk: PoliceDeskDep) -> IncidentOut:
    """Take one action (register, dispatch, accept, … transfer_to_police) on the incident.

    The transition table decides who may take it from which state: a wrong role is 403, a
    wrong state or a stale expected_version 409, a missing reason 422.
    """
    incident = queries.incident_for(session=session, user=user, incident_id=incident_id)
    if body.original_id is not None:  # the original must be visible too
        queries.incident_for(session=session, user=user, incident_id=body.original_id)
    lon, lat = to_wgs84(body.lon, body.lat, body.crs)
    request = actions.StepRequest(
        reason=body.reason or body.notes, expected_version=body.expected_version,
        user_ids=tuple(body.user_ids), unit_type=body.unit_type, request_id=body.request_id,
        satisfied=body.satisfied, working_days=body.working_days, original_id=body.original_id,
        lon=lon, lat=lat)
    actions.take_action(session=session, runtime=runtime, actor=as_actor(user),
                        incident_id=incident.id, action=action, request=request,
                        calendar=current_calendar(session), police_desk=desk, source_ip=ip)
    return incident_out(session, runtime, incident.id, user, language)


@router.post("/incidents/{incident_id}/reveal-phone", response_model=RevealOut)
def reveal_phone(incident_id: int, body: RevealIn, user: Unmasker, session: SessionDep,
                 runtime: RuntimeDep, ip: ClientIp) -> RevealOut:
    """The reporter's full number, with a stated reason; every reveal is in the audit trail."""
    incident = queries.incident_for(session=session, user=user, incident_id=incident_id)
    phone = actions.reveal_reporter_phone(session=session, runtime=runtime, actor=as_actor(user),
                                          incident_id=incident.id, reason=body.reason,
                                          source_ip=ip)
    return RevealOut(reporter_phone=phone)


@router.get("/responders", response_model=list[ResponderOut], tags=["responders"])
def list_responders(user: Reader, session: SessionDep,
                    runtime: RuntimeDep) -> list[ResponderOut]:
    """Everyone on duty now in the user's zones: state, last position, what they are on."""
    views = queries.responders_on_duty(session=session, user=user, at=runtime.clock.now())
    return [ResponderOut.of(view) for view in views]


@router.post("/responders/me/position", status_code=204, tags=["responders"])
def report_position(body: PositionIn, user: Responder, session: SessionDep,
                    runtime: RuntimeDep, ip: ClientIp) -> Response:
    """A responder's phone reports where they are and/or whether they are available."""
    lon, lat = to_wgs84(body.lon, body.lat, body.crs)
    actions.update_responder_status(session=session, runtime=runtime, actor=as_actor(user),
                                    state=body.state, lon=lon, lat=lat, source_ip=ip)
    return Response(status_code=204)
