"""JSON routes: the network as GeoJSON and the water account."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from grassroots.irrigation.accounting.queries import account_report, default_range, report_json
from grassroots.irrigation.accounting.states import Grouping, Measure, Period
from grassroots.irrigation.network.queries import network_geojson, structures
from grassroots.irrigation.overview import structure_status
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Permission
from grassroots.kernel.clock import to_display
from grassroots.runtime import Runtime
from grassroots.web.deps import LanguageDep, RuntimeDep, SessionDep, require_permission

IrrigationReader = Annotated[User, Depends(require_permission(Permission.IRRIGATION_READ))]
GEOJSON_MEDIA_TYPE = "application/geo+json"

router = APIRouter(prefix="/api/v1/irrigation", tags=["irrigation"])


@router.get("/network")
def network(session: SessionDep, runtime: RuntimeDep, _user: IrrigationReader,
            fields: bool = True) -> JSONResponse:
    """Canals, structures (with latest readings, device state, last daily volume) and fields."""
    status = structure_status(session=session, structure_list=structures(session=session),
                              now=runtime.clock.now())
    body = network_geojson(session=session, status=status, include_fields=fields)
    return JSONResponse(body, media_type=GEOJSON_MEDIA_TYPE)


@router.get("/account")
def account(
    session: SessionDep,
    runtime: RuntimeDep,
    language: LanguageDep,
    _user: IrrigationReader,
    group: Annotated[Grouping, Query()] = Grouping.USE,
    period: Annotated[Period, Query()] = Period.MONTH,
    measure: Annotated[Measure, Query()] = Measure.SOURCE,
    start: Annotated[date | None, Query()] = None,
    end: Annotated[date | None, Query()] = None,
) -> dict[str, Any]:
    """Volumes (whole m³) per period and group, the use summary and the canal coefficients."""
    first, last = resolve_range(session, runtime, start, end)
    report = account_report(session=session, grouping=group, period=period, measure=measure,
                            first=first, last=last, language=language)
    return report_json(report)


def resolve_range(session: Session, runtime: Runtime, start: date | None, end: date | None
                  ) -> tuple[date, date]:
    """The report's days: as given, else the calendar year of the given end, start or data."""
    today = to_display(runtime.clock.now()).date()
    default_first, default_last = default_range(session=session, today=today)
    first = start or (date(end.year, 1, 1) if end else default_first)
    last = end or (date(first.year, 12, 31) if start else default_last)
    return first, last
