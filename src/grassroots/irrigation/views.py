"""HTML pages of the irrigation district: map, schematic, water account, station pages.

`router` also carries the JSON routes of grassroots.irrigation.api, so one include wires both.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from grassroots.irrigation import api
from grassroots.irrigation.accounting.queries import (
    AccountReport,
    account_report,
    daily_volumes,
    default_range,
)
from grassroots.irrigation.accounting.states import Grouping, Measure, Period
from grassroots.irrigation.accounting.xlsx import XLSX_MEDIA_TYPE, account_workbook
from grassroots.irrigation.network import queries
from grassroots.irrigation.network.models import (
    CanalLevel,
    Crop,
    Structure,
    StructureKind,
    WaterUse,
)
from grassroots.irrigation.network.queries import LatestReading, StructureStatus
from grassroots.irrigation.overview import structure_status
from grassroots.irrigation.svg import (
    KIND_COLOURS,
    LEVEL_COLOURS,
    SchematicItem,
    line_chart,
    schematic,
)
from grassroots.kernel.clock import to_display
from grassroots.kernel.i18n import translate
from grassroots.runtime import Runtime
from grassroots.web.deps import LanguageDep, RuntimeDep, SessionDep
from grassroots.web.templating import page_context

IrrigationReader = api.IrrigationReader
READING_WINDOW = timedelta(days=7)  # the station page charts its last week of telemetry
MAX_CHARTS = 8
# Preferred quantity for a one-line caption: a flow beats a level beats anything else.
CAPTION_PREFERENCE = ("flow", "level", "opening", "moisture", "temperature")

router = APIRouter(tags=["irrigation"])
router.include_router(api.router)


def _render(request: Request, template: str, **values: Any) -> HTMLResponse:
    templates = request.app.state.templates
    response: HTMLResponse = templates.TemplateResponse(request, template,
                                                        page_context(request, **values))
    return response


def m3(value: int | float | None) -> str:
    return "—" if value is None else f"{round(value):,}"


def coefficient(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _reading_text(reading: LatestReading) -> str:
    return f"{reading.value:.3g} ({reading.quantity})"


def caption(state: StructureStatus) -> str:
    """One short line for a structure: its most telling latest reading, else its last volume."""
    if state.readings:
        for word in CAPTION_PREFERENCE:
            for reading in state.readings:
                if word in reading.quantity:
                    return _reading_text(reading)
        return _reading_text(state.readings[0])
    if state.last_volume_day is not None and state.last_volume_m3 is not None:
        return f"{state.last_volume_day:%m-%d} {m3(state.last_volume_m3)} m³"
    return ""


@router.get("/irrigation", response_class=HTMLResponse)
def district_map(request: Request, session: SessionDep, language: LanguageDep,
                 _user: IrrigationReader) -> HTMLResponse:
    """The district on a map: canals by level, structures by kind, fields by crop."""
    def _(key: str) -> str:
        return translate(key, language)

    config = {
        "networkUrl": "/api/v1/irrigation/network",
        "tileUrl": request.app.state.runtime.settings.tile_url,
        "kindColours": {k.value: c for k, c in KIND_COLOURS.items()},
        "levelColours": {k.value: c for k, c in LEVEL_COLOURS.items()},
        "messages": {
            **{f"kind.{k.value}": _(f"irrigation.kind.{k.value}") for k in StructureKind},
            **{f"level.{k.value}": _(f"irrigation.level.{k.value}") for k in CanalLevel},
            **{f"crop.{k.value}": _(f"irrigation.crop.{k.value}") for k in Crop},
            **{f"use.{k.value}": _(f"irrigation.use.{k.value}") for k in WaterUse},
            **{key: _(f"irrigation.map.{key}") for key in (
                "length", "capacity", "lining", "area", "wua", "last_volume", "readings",
                "device", "station_page", "no_data", "layer_canals", "layer_structures",
                "layer_fields")},
        },
    }
    return _render(request, "irrigation/map.html", config=config,
                   counts=queries.counts(session=session), kinds=list(StructureKind),
                   levels=list(CanalLevel), kind_colours=KIND_COLOURS,
                   level_colours=LEVEL_COLOURS)


@router.get("/irrigation/schematic", response_class=HTMLResponse)
def canal_schematic(request: Request, session: SessionDep, runtime: RuntimeDep,
                    language: LanguageDep, _user: IrrigationReader) -> HTMLResponse:
    """The canal system as a line diagram with each structure's latest state."""
    structure_list = queries.structures(session=session)
    status = structure_status(session=session, structure_list=structure_list,
                              now=runtime.clock.now())
    items = [SchematicItem(s, caption(status[s.id]),
                           f"{s.name} · {translate(f'irrigation.kind.{s.kind.value}', language)}")
             for s in structure_list]
    svg = schematic(queries.canals(session=session), items,
                    labels={"pump": translate("irrigation.kind.pump_station", language)})
    return _render(request, "irrigation/schematic.html", svg=svg, kinds=list(StructureKind),
                   kind_colours=KIND_COLOURS, level_colours=LEVEL_COLOURS,
                   levels=list(CanalLevel))


def _report(session: Session, runtime: Runtime, language: str, group: Grouping,
            period: Period, measure: Measure, start: date | None, end: date | None
            ) -> AccountReport:
    first, last = api.resolve_range(session, runtime, start, end)
    return account_report(session=session, grouping=group, period=period, measure=measure,
                          first=first, last=last, language=language)


@router.get("/irrigation/account", response_class=HTMLResponse)
def water_account(
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    language: LanguageDep,
    _user: IrrigationReader,
    group: Annotated[Grouping, Query()] = Grouping.USE,
    period: Annotated[Period, Query()] = Period.MONTH,
    measure: Annotated[Measure, Query()] = Measure.SOURCE,
    start: Annotated[date | None, Query()] = None,
    end: Annotated[date | None, Query()] = None,
) -> HTMLResponse:
    """The water account with its filters, the use summary and the canal coefficients."""
    report = _report(session, runtime, language, group, period, measure, start, end)
    query = urlencode({"group": group.value, "period": period.value, "measure": measure.value,
                       "start": report.table.first.isoformat(),
                       "end": report.table.last.isoformat()})
    return _render(request, "irrigation/account.html", report=report, table=report.table,
                   groupings=list(Grouping), periods=list(Period), measures=list(Measure),
                   xlsx_url=f"/irrigation/account.xlsx?{query}",
                   json_url=f"/api/v1/irrigation/account?{query}", m3=m3,
                   coefficient=coefficient)


@router.get("/irrigation/account.xlsx")
def water_account_xlsx(
    session: SessionDep,
    runtime: RuntimeDep,
    language: LanguageDep,
    _user: IrrigationReader,
    group: Annotated[Grouping, Query()] = Grouping.USE,
    period: Annotated[Period, Query()] = Period.MONTH,
    measure: Annotated[Measure, Query()] = Measure.SOURCE,
    start: Annotated[date | None, Query()] = None,
    end: Annotated[date | None, Query()] = None,
) -> Response:
    """The same report as the page, as an Excel workbook."""
    report = _report(session, runtime, language, group, period, measure, start, end)
    t = report.table
    stem = f"water-account-{t.grouping.value}-{t.period.value}-{t.first}-{t.last}"
    local = f"{translate('irrigation.account.title', language)}-{t.first}-{t.last}.xlsx"
    disposition = f"attachment; filename=\"{stem}.xlsx\"; filename*=UTF-8''{quote(local)}"
    return Response(account_workbook(report, language), media_type=XLSX_MEDIA_TYPE,
                    headers={"Content-Disposition": disposition})


def _chart_label(x: date | datetime) -> str:
    if isinstance(x, datetime):
        return f"{to_display(x):%m-%d %H:%M}"
    return x.isoformat()


@router.get("/irrigation/stations/{code}", response_class=HTMLResponse)
def station(request: Request, code: str, session: SessionDep, runtime: RuntimeDep,
            language: LanguageDep, _user: IrrigationReader) -> HTMLResponse:
    """One structure: its device, latest readings, a week of telemetry and its daily volumes."""
    structure: Structure = queries.structure_by_code(session=session, code=code)
    now = runtime.clock.now()
    state = structure_status(session=session, structure_list=[structure], now=now)[structure.id]
    series = queries.reading_series(session=session, structure_id=structure.id,
                                    since=now - READING_WINDOW)
    colour = KIND_COLOURS[structure.kind]
    charts = [line_chart(points, title=quantity, unit=quantity.rsplit("_", 1)[-1],
                         colour=colour, x_label=_chart_label)
              for quantity, points in sorted(series.items())[:MAX_CHARTS]]
    first, last = default_range(session=session, today=to_display(now).date())
    volumes = daily_volumes(session=session, structure_id=structure.id, first=first, last=last)
    volume_chart = None
    if volumes:
        # Days without a row had no water: plot them as zero, not as a line across the gap.
        by_day = {day: volume for day, volume, _ in volumes}
        span = range((volumes[-1][0] - volumes[0][0]).days + 1)
        days = [volumes[0][0] + timedelta(days=i) for i in span]
        volume_chart = line_chart(
            [(day, by_day.get(day, 0) / 86_400) for day in days],
            title=translate("irrigation.station.daily_mean_flow", language), unit="m³/s",
            colour=colour, value_format=lambda v: f"{v:.2f}")
    canals = {c.id: c for c in queries.canals(session=session)}
    return _render(
        request, "irrigation/station.html", structure=structure, state=state, charts=charts,
        volume_chart=volume_chart, volume_total=sum(v for _, v, _ in volumes),
        source_total=sum(s or 0 for _, _, s in volumes), volume_days=len(volumes),
        volume_range=(first, last), config=queries.config_of(structure),
        canal=canals.get(structure.canal_id) if structure.canal_id else None,
        outlet=canals.get(structure.outlet_canal_id) if structure.outlet_canal_id else None,
        pump_units=(queries.pump_units(session=session, station_id=structure.id)
                    if structure.kind == StructureKind.PUMP_STATION else []),
        m3=m3, to_display=to_display)
