"""The grid worker's phone pages: report an incident with photos, and work the ones sent to you.

Built for WeChat's in-app browser and cheap Android phones: plain HTML forms that work without
JavaScript, a little ES5 for the phone's position, large touch targets. A report goes through
the command core's intake (channel grid_worker), so it is located, registered and dispatched to
the zone's on-duty responder within the request. Bad input re-renders the form with the reason
and stores nothing: no incident, no file.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.datastructures import FormData, UploadFile

from grassroots.command import actions, media, queries
from grassroots.command.categories import AttributeSpec, attributes_of, validate_answers
from grassroots.command.context import current_calendar, current_locator
from grassroots.command.models import Incident, IncidentCategory, PhotoStage
from grassroots.command.request_deps import (
    ClientIp,
    LanguageDep,
    RuntimeDep,
    SessionDep,
    as_actor,
    render,
    require_any,
)
from grassroots.command.states import (
    DESCRIPTION_MAX_CHARS,
    AttributeType,
    Channel,
    IncidentState,
)
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Permission
from grassroots.kernel.errors import GrassrootsError, NotFound, ValidationFailed
from grassroots.kernel.i18n import translate
from grassroots.kernel.regions.geo import gcj02_to_wgs84
from grassroots.kernel.regions.models import Region

log = logging.getLogger(__name__)

ADDRESS_MAX_CHARS = 300  # Incident.address_text
KEY_MAX_CHARS = 120  # Incident.idempotency_key
RECENT_REPORTS = 20
PHOTO_FIELD = "photos"
ATTRIBUTE_PREFIX = "attr."  # attr.<category code>.<question code>, so questions never clash
CRS_CHOICES = ("wgs84", "gcj02")
# What the "done" banner on /field/mine may say after an action.
DONE_MESSAGES = {"accept": "command.field.done.accept", "arrive": "command.field.done.arrive",
                 "handle": "command.field.done.handle"}

router = APIRouter(tags=["field"], include_in_schema=False)

Reporter = Annotated[User, Depends(require_any(Permission.INCIDENTS_REPORT))]
FieldUser = Annotated[User, Depends(require_any(Permission.INCIDENTS_REPORT,
                                                Permission.INCIDENTS_HANDLE))]
Responder = Annotated[User, Depends(require_any(Permission.INCIDENTS_HANDLE))]


async def _form(request: Request) -> FormData:
    """The submitted form, multipart included (parsed once; starlette caches it)."""
    return await request.form()


FormDep = Annotated[FormData, Depends(_form)]


# --- the report form ---------------------------------------------------------------------------


@dataclass
class CategoryGroup:
    name: str
    categories: list[IncidentCategory] = field(default_factory=list)


@dataclass
class ReportForm:
    """What the worker typed, kept to fill the form again after an error."""

    category: str = ""
    lon: str = ""
    lat: str = ""
    crs: str = "wgs84"
    address: str = ""
    description: str = ""
    idempotency_key: str = ""
    answers: dict[str, Any] = field(default_factory=dict)


def _groups(categories: Sequence[IncidentCategory]) -> list[CategoryGroup]:
    groups: dict[str, CategoryGroup] = {}
    for category in categories:
        groups.setdefault(category.major_code, CategoryGroup(category.major_name_zh)
                          ).categories.append(category)
    return list(groups.values())


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _uploads(form: FormData, name: str = PHOTO_FIELD) -> list[UploadFile]:
    return [item for item in form.getlist(name) if isinstance(item, UploadFile)]


def _render_form(request: Request, session: Session, values: ReportForm,
                 error: str | None = None, status_code: int = 200) -> HTMLResponse:
    categories = queries.list_categories(session=session)
    questions = {c.code: attributes_of(c) for c in categories}
    return render(request, "command/field/report.html", status_code=status_code,
                  groups=_groups(categories), questions={k: v for k, v in questions.items() if v},
                  form=values, error=error, max_photos=media.MAX_PHOTOS,
                  max_mb=media.MAX_PHOTO_BYTES // (1024 * 1024),
                  description_max=DESCRIPTION_MAX_CHARS, address_max=ADDRESS_MAX_CHARS,
                  AttributeType=AttributeType)


@router.get("/field", response_class=HTMLResponse)
def report_form(request: Request, user: Reporter, session: SessionDep,
                category: str = "") -> HTMLResponse:
    """The report form, with a fresh idempotency token so a double tap makes one incident."""
    values = ReportForm(category=category, idempotency_key=secrets.token_urlsafe(18))
    response = _render_form(request, session, values)
    # Going back to a stored copy would resend its token and land on the earlier report.
    response.headers["Cache-Control"] = "no-store"
    return response


def _read_form(form: FormData) -> ReportForm:
    return ReportForm(category=_text(form, "category"), lon=_text(form, "lon"),
                      lat=_text(form, "lat"), crs=_text(form, "crs") or "wgs84",
                      address=_text(form, "address"), description=_text(form, "description"),
                      idempotency_key=_text(form, "idempotency_key")[:KEY_MAX_CHARS])


def _answers(form: FormData, category: IncidentCategory,
             specs: tuple[AttributeSpec, ...]) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for spec in specs:
        name = f"{ATTRIBUTE_PREFIX}{category.code}.{spec.code}"
        if spec.datatype == AttributeType.MULTIVALUELIST:
            picked = [v for v in form.getlist(name) if isinstance(v, str) and v]
            if picked:
                answers[spec.code] = picked
        elif value := _text(form, name):
            answers[spec.code] = value
    return answers


@dataclass(frozen=True)
class CheckedReport:
    category: IncidentCategory
    lon: float
    lat: float
    answers: dict[str, Any]


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _check_report(session: Session, values: ReportForm, form: FormData) -> CheckedReport:
    """Everything about the report but its photos; ValidationFailed names the first problem."""
    if not values.category:
        raise ValidationFailed("command.field.error.category_required")
    category = queries.get_category(session=session, code=values.category)
    if category is None or not category.active:
        raise ValidationFailed("command.field.error.unknown_category")
    if not values.lon and not values.lat:
        raise ValidationFailed("command.field.error.location_required")
    lon, lat = _number(values.lon), _number(values.lat)
    if lon is None or lat is None or not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise ValidationFailed("command.field.error.bad_number")
    if values.crs not in CRS_CHOICES:
        raise ValidationFailed("command.field.error.bad_crs")
    if values.crs == "gcj02":
        lon, lat = gcj02_to_wgs84(lon, lat)  # stored as WGS-84 (docs/DOMAIN.md §7)
    if not current_locator(session)(lon, lat):
        raise ValidationFailed("command.field.error.outside", lon=f"{lon:.6f}", lat=f"{lat:.6f}")
    if len(values.address) > ADDRESS_MAX_CHARS:
        raise ValidationFailed("command.field.error.address_too_long", limit=ADDRESS_MAX_CHARS)
    if len(values.description) > DESCRIPTION_MAX_CHARS:
        raise ValidationFailed("command.error.description_too_long", limit=DESCRIPTION_MAX_CHARS)
    specs = attributes_of(category)
    values.answers = _answers(form, category, specs)
    try:
        validate_answers(specs, values.answers)
    except ValidationFailed as exc:
        question = next((s.description for s in specs if s.code == exc.params.get("code")), "")
        message_id = ("command.field.error.attribute_required"
                      if exc.message_id == "command.error.attribute_required"
                      else "command.field.error.bad_attribute")
        raise ValidationFailed(message_id, question=question) from None
    return CheckedReport(category, lon, lat, values.answers)


def _existing(session: Session, user: User, key: str) -> Incident | None:
    if not key:
        return None
    return queries.find_by_idempotency_key(session=session, channel=Channel.GRID_WORKER,
                                           client_ref=user.username, key=key)


def _to_report(incident: Incident) -> RedirectResponse:
    return RedirectResponse(f"/field/reports/{incident.id}", status_code=303)


@router.post("/field/reports")
def submit_report(request: Request, user: Reporter, session: SessionDep, runtime: RuntimeDep,
                  form: FormDep, ip: ClientIp, language: LanguageDep) -> Response:
    """Check, stage the photos, intake (which dispatches), attach the photos, show the number."""
    values = _read_form(form)
    earlier = _existing(session, user, values.idempotency_key)
    if earlier is not None:  # the same form sent twice: show the first report, store nothing
        return _to_report(earlier)
    try:
        checked = _check_report(session, values, form)
        staged = media.stage_photos(runtime=runtime, uploads=_uploads(form))
    except ValidationFailed as exc:
        return _render_form(request, session, values, _with_photo_hint(exc, form, language),
                            status_code=422)
    try:
        result = actions.intake(
            session=session, runtime=runtime, actor=as_actor(user), channel=Channel.GRID_WORKER,
            category_code=checked.category.code, calendar=current_calendar(session),
            locator=current_locator(session), lon=checked.lon, lat=checked.lat,
            address_text=values.address or None, description=values.description,
            idempotency_key=values.idempotency_key or None, attributes=checked.answers,
            source_ip=ip)
    except GrassrootsError as exc:
        media.discard(staged)
        return _render_form(request, session, values, _with_photo_hint(exc, form, language),
                            status_code=exc.status_code)
    except BaseException:
        media.discard(staged)
        raise
    if not result.created:
        media.discard(staged)  # a racing twin stored the report and its photos
        return _to_report(result.incident)
    try:
        media.attach_photos(session=session, runtime=runtime, actor=as_actor(user),
                            incident_id=result.incident.id, staged=staged,
                            stage=PhotoStage.REPORT, source_ip=ip)
    except Exception:
        # The incident is in and already dispatched, which matters more than its photos;
        # attach_photos left nothing half-stored, so say the photos are missing and go on.
        log.exception("photos of incident %s were not stored", result.incident.number)
        return RedirectResponse(f"/field/reports/{result.incident.id}?photos=failed",
                                status_code=303)
    return _to_report(result.incident)


def _with_photo_hint(exc: GrassrootsError, form: FormData, language: str) -> str:
    """The error, plus a reminder that chosen photos must be chosen again (browsers drop them)."""
    message = exc.message(language)
    if _uploads(form) and any(upload.filename for upload in _uploads(form)):
        message += " " + translate("command.field.photos_again", language)
    return message


# --- after a report ----------------------------------------------------------------------------


def _visible_incident(session: Session, user: User, incident_id: int) -> Incident:
    incident = queries.get_incident(session=session, incident_id=incident_id)
    if incident is None or not media.may_see_incident(session=session, user=user,
                                                      incident=incident):
        raise NotFound()
    return incident


def _names(session: Session, user_ids: Sequence[int]) -> list[str]:
    if not user_ids:
        return []
    rows = session.execute(select(User.id, User.display_name)
                           .where(User.id.in_(list(user_ids)))).all()
    by_id: dict[int, str] = {row[0]: row[1] for row in rows}
    return [by_id[u] for u in user_ids if u in by_id]


@router.get("/field/reports/{incident_id}", response_class=HTMLResponse)
def report_done(request: Request, incident_id: int, user: FieldUser, session: SessionDep,
                photos: str = "") -> HTMLResponse:
    """The confirmation: number, state, zone, who was sent, the photos."""
    incident = _visible_incident(session, user, incident_id)
    zone = session.get(Region, incident.zone_id) if incident.zone_id else None
    sent = _names(session, queries.active_field_user_ids(session=session,
                                                         incident_id=incident.id))
    category = session.get(IncidentCategory, incident.category_id)
    return render(request, "command/field/done.html", incident=incident, zone=zone, sent=sent,
                  category=category, photos_failed=photos == "failed",
                  photos=media.photos_of(session=session, incident_id=incident.id))


# --- the worker's own list ---------------------------------------------------------------------


def _render_mine(request: Request, session: Session, user: User, *, error: str | None = None,
                 done: str | None = None, status_code: int = 200) -> HTMLResponse:
    assigned = queries.field_work_of(session=session, user_id=user.id)
    categories = {c.id: c for c in queries.list_categories(session=session,
                                                           include_inactive=True)}
    return render(request, "command/field/mine.html", status_code=status_code,
                  assigned=assigned, categories=categories, error=error, done=done,
                  reports=queries.incidents_reported_by(session=session, username=user.username,
                                                        limit=RECENT_REPORTS),
                  max_photos=media.MAX_PHOTOS, IncidentState=IncidentState)


@router.get("/field/mine", response_class=HTMLResponse)
def mine(request: Request, user: FieldUser, session: SessionDep, language: LanguageDep,
         done: str = "", number: str = "") -> HTMLResponse:
    """My recent reports, and the incidents I am sent to with a button for the next step."""
    message = (translate(DONE_MESSAGES[done], language, number=number)
               if done in DONE_MESSAGES else None)
    return _render_mine(request, session, user, done=message)


def _version(form: FormData) -> int | None:
    text = _text(form, "version")
    return int(text) if text.isdigit() else None


def _done(action: str, incident: Incident) -> RedirectResponse:
    query = urlencode({"done": action, "number": incident.number})
    return RedirectResponse(f"/field/mine?{query}", status_code=303)


def _refused(request: Request, session: Session, user: User, incident: Incident,
             exc: GrassrootsError, language: str) -> HTMLResponse:
    message = f"{incident.number}：{exc.message(language)}"
    return _render_mine(request, session, user, error=message, status_code=exc.status_code)


@router.post("/field/incidents/{incident_id}/accept")
def accept(request: Request, incident_id: int, user: Responder, session: SessionDep,
           runtime: RuntimeDep, form: FormDep, ip: ClientIp, language: LanguageDep) -> Response:
    incident = _visible_incident(session, user, incident_id)
    actor = as_actor(user)
    try:
        actions.accept(session=session, runtime=runtime, actor=actor, incident_id=incident.id,
                       expected_version=_version(form), source_ip=ip)
    except GrassrootsError as exc:
        return _refused(request, session, user, incident, exc, language)
    return _done("accept", incident)


@router.post("/field/incidents/{incident_id}/arrive")
def arrive(request: Request, incident_id: int, user: Responder, session: SessionDep,
           runtime: RuntimeDep, form: FormDep, ip: ClientIp, language: LanguageDep) -> Response:
    """On scene; the phone's position (if it gave one) goes with it."""
    incident = _visible_incident(session, user, incident_id)
    actor = as_actor(user)
    lon, lat = _number(_text(form, "lon")), _number(_text(form, "lat"))
    if lon is None or lat is None:
        lon = lat = None
    try:
        actions.arrive(session=session, runtime=runtime, actor=actor, incident_id=incident.id,
                       lon=lon, lat=lat, expected_version=_version(form), source_ip=ip)
    except GrassrootsError as exc:
        return _refused(request, session, user, incident, exc, language)
    return _done("arrive", incident)


@router.post("/field/incidents/{incident_id}/handle")
def handle(request: Request, incident_id: int, user: Responder, session: SessionDep,
           runtime: RuntimeDep, form: FormDep, ip: ClientIp, language: LanguageDep) -> Response:
    """Handled, with at least one photo of the result; a refusal stores no photo."""
    incident = _visible_incident(session, user, incident_id)
    actor = as_actor(user)
    note = _text(form, "note")
    try:
        if len(note) > DESCRIPTION_MAX_CHARS:
            raise ValidationFailed("command.error.description_too_long",
                                   limit=DESCRIPTION_MAX_CHARS)
        staged = media.stage_photos(runtime=runtime, uploads=_uploads(form))
        if not staged:
            raise ValidationFailed("command.field.error.result_photo_required")
    except GrassrootsError as exc:
        return _refused(request, session, user, incident, exc, language)
    try:
        actions.handle(session=session, runtime=runtime, actor=actor, incident_id=incident.id,
                       note=note or None, expected_version=_version(form), source_ip=ip)
    except GrassrootsError as exc:
        media.discard(staged)
        return _refused(request, session, user, incident, exc, language)
    except BaseException:
        media.discard(staged)
        raise
    media.attach_photos(session=session, runtime=runtime, actor=actor, incident_id=incident.id,
                        staged=staged, stage=PhotoStage.RESULT, source_ip=ip)
    return _done("handle", incident)

