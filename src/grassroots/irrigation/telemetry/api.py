"""Telemetry JSON routes: batch upload of readings, reading queries, device liveness.

POST /api/v1/irrigation/readings takes a list of up to 50,000 readings (or an object
``{"readings": [...]}``), each ``{"structure": code, "quantity", "observed_at", "value"}``
with an optional ``quality`` of sender flags. Everything is checked before anything is
written; one bad item rejects the batch with a per-item problem list (422). The upload
is one transaction and one audit row (readings themselves are not audited one by one).
Allowed to irrigation.dispatch, and to API-token integrations whose user may read
irrigation data (a data logger's token carries a read-only role).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import JSONResponse

from grassroots.irrigation.telemetry import queries
from grassroots.irrigation.telemetry.schemas import (
    MAX_UPLOAD,
    DeviceOut,
    DevicesOut,
    ReadingOut,
    ReadingsOut,
    UploadRejected,
    UploadResult,
    check_upload,
    parse_time,
)
from grassroots.irrigation.telemetry.state import QUANTITIES
from grassroots.irrigation.telemetry.store import StoreResult, insert_readings
from grassroots.kernel.audit import record
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Permission, has_permission
from grassroots.kernel.errors import NotFound, PermissionDenied, ValidationFailed
from grassroots.kernel.i18n import translate
from grassroots.web.deps import (
    ClientIp,
    CurrentUser,
    LanguageDep,
    RuntimeDep,
    SessionDep,
    require_permission,
)

router = APIRouter(tags=["irrigation telemetry"])

UPLOAD_ACTION = "irrigation:readings:upload"


def uploader(request: Request, user: CurrentUser) -> User:
    """irrigation.dispatch, or an API token whose user may read irrigation data."""
    if has_permission(user.role, Permission.IRRIGATION_DISPATCH):
        return user
    if (getattr(request.state, "auth_method", None) == "token"
            and has_permission(user.role, Permission.IRRIGATION_READ)):
        return user
    raise PermissionDenied()


Uploader = Annotated[User, Depends(uploader)]
Reader = Annotated[User, Depends(require_permission(Permission.IRRIGATION_READ))]


@router.post("/api/v1/irrigation/readings", response_model=UploadResult,
             responses={422: {"description": "The batch was rejected; see error.details"}})
def upload_readings(
    payload: Annotated[Any, Body(description=f"Up to {MAX_UPLOAD} readings")],
    session: SessionDep,
    runtime: RuntimeDep,
    language: LanguageDep,
    source_ip: ClientIp,
    user: Uploader,
) -> Any:
    """Store a batch of readings, all or nothing."""
    batch = uuid.uuid4().hex[:16]
    now = runtime.clock.now()
    received = len(payload) if isinstance(payload, list) else None
    rejected: UploadRejected | None = None
    result = StoreResult(0, 0)
    with session.begin():
        try:
            readings = check_upload(
                payload, now=now,
                resolve=lambda codes: queries.structure_ids_by_code(session=session, codes=codes))
        except UploadRejected as error:
            rejected = error
            record(session, runtime=runtime, actor=user.username, action=UPLOAD_ACTION,
                   object_type="reading_batch", object_id=batch, outcome="failure",
                   source_ip=source_ip,
                   detail={"received": received, "problems": error.total,
                           "first": [f"{p.index}:{p.field}:{p.code}" for p in error.problems[:5]]})
        else:
            result = insert_readings(session, readings, received_at=now)
            times = [reading.observed_at for reading in readings]
            record(session, runtime=runtime, actor=user.username, action=UPLOAD_ACTION,
                   object_type="reading_batch", object_id=batch, source_ip=source_ip,
                   detail={"received": len(readings), "inserted": result.inserted,
                           "duplicates": result.duplicates,
                           "structures": len({reading.structure_id for reading in readings}),
                           "from": min(times), "to": max(times)})
    if rejected is not None:
        return _rejection(rejected, language)
    return UploadResult(batch=batch, received=result.inserted + result.duplicates,
                        inserted=result.inserted, duplicates=result.duplicates)


def _rejection(error: UploadRejected, language: str) -> JSONResponse:
    details = [{"index": p.index, "field": p.field, "code": p.code,
                "message": translate(p.message_id, language, **p.params)}
               for p in error.problems]
    return JSONResponse(status_code=422, content={"error": {
        "code": error.code, "message": error.message(language), "problems": error.total,
        "details": details}})


def _time(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(int(value) if value.isdigit() else value)
    except ValueError:
        raise ValidationFailed("telemetry.query.bad_time", field=name) from None


@router.get("/api/v1/irrigation/readings", response_model=ReadingsOut)
def list_readings(
    session: SessionDep,
    user: Reader,
    structure: Annotated[str, Query(description="Structure code")],
    quantity: str | None = None,
    start: Annotated[str | None, Query(description="ISO 8601 with offset, inclusive")] = None,
    end: Annotated[str | None, Query(description="ISO 8601 with offset, exclusive")] = None,
    limit: Annotated[int, Query(ge=1, le=queries.MAX_LIMIT)] = queries.DEFAULT_LIMIT,
) -> ReadingsOut:
    """One structure's readings, oldest first."""
    since, until = _time("start", start), _time("end", end)
    if since is not None and until is not None and until <= since:
        raise ValidationFailed("telemetry.query.bad_range")
    if quantity is not None and quantity not in QUANTITIES:
        raise ValidationFailed("telemetry.query.unknown_quantity", quantity=quantity[:40])
    found = queries.structure_by_code(session=session, code=structure)
    if found is None:
        raise NotFound("telemetry.query.unknown_structure", code=structure[:40])
    rows = queries.readings(session=session, structure_id=found.id, quantity=quantity,
                            start=since, end=until, limit=limit)
    return ReadingsOut(structure=found.code, count=len(rows), readings=[
        ReadingOut(quantity=r.quantity, observed_at=r.observed_at, value=r.value,
                   quality=r.quality, source=r.source) for r in rows])


@router.get("/api/v1/irrigation/devices", response_model=DevicesOut)
def list_devices(session: SessionDep, runtime: RuntimeDep, user: Reader) -> DevicesOut:
    """Every field device with its liveness judged now."""
    now = runtime.clock.now()
    rows = queries.device_overview(session=session, now=now)
    return DevicesOut(at=now, devices=[
        DeviceOut(structure=r.code, name=r.name, kind=r.kind, state=r.state,
                  last_seen_at=r.last_seen_at, last_reading_at=r.last_reading_at,
                  last_failure_at=r.last_failure_at, last_error=r.last_error,
                  announced=r.announced, voltage_v=r.voltage_v, last_source=r.last_source)
        for r in rows])
