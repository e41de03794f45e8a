"""Derived quantities from raw readings: flume and gate flows, and measured daily volumes.

``derive_flows`` turns a Parshall flume's upstream head Ha (``head_m``, or ``water_level_m``
as SL 651 calls it; Hb from ``water_level_downstream_m`` when the flume has a throat gauge)
and a gate's opening with its upstream / downstream levels into ``flow_m3s`` readings with
source ``derived``. Heads and levels are taken relative to the crest / sill: a structure whose
gauge reads from another datum names that datum's crest or sill level in its config
(``crest_level_m`` / ``sill_level_m``, default 0). A result the hydraulics cannot give is
stored as NULL with its flags (INVALID, UNAVAILABLE), never as zero. The inputs' own flags and
the checks run over them (plausible range, spike, stuck sensor) are OR-ed into the result.

Readings are never overwritten: a derived reading whose key (structure, ``flow_m3s``, time)
is already stored, by an earlier run or by a device that reports its own flow, is left alone,
so running twice stores nothing new.

``measured_daily_volumes`` integrates each turnout's ``flow_m3s`` over one Beijing-time day
into a ``DailyVolume`` row with source ``measured`` (one row per day and structure, upserted);
a day with gaps carries the GAP flag, and its coverage and gaps come back in the result.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from grassroots.irrigation.accounting.models import DailyVolume, VolumeSource
from grassroots.irrigation.network.models import Structure, StructureKind, WuaTurnout
from grassroots.irrigation.telemetry.models import Reading
from grassroots.irrigation.telemetry.state import QUANTITIES, Quality, Source
from grassroots.irrigation.water.hydraulics import FlumeForm, GateRating, ParshallFlume
from grassroots.irrigation.water.quality import (
    Check,
    RangeCheck,
    SpikeCheck,
    StuckCheck,
    apply_checks,
)
from grassroots.irrigation.water.volumes import ACCOUNTING_TZ, DEFAULT_MAX_GAP, Gap, volumes_by_day
from grassroots.runtime import Runtime

log = logging.getLogger(__name__)

FLOW = "flow_m3s"
HEAD_QUANTITIES = ("head_m", "water_level_m")  # a flume's Ha: Modbus name, SL 651 name
THROAT_QUANTITY = "water_level_downstream_m"  # a flume's Hb, where a throat gauge exists
OPENING = "gate_opening_m"
UPSTREAM = "water_level_upstream_m"
DOWNSTREAM = "water_level_downstream_m"
GATE_KINDS = frozenset({StructureKind.INTEGRATED_GATE, StructureKind.SMART_HOIST})
# Opening is not checked for being stuck: a gate legitimately holds its setting for hours.
STUCK_CHECKED = frozenset({*HEAD_QUANTITIES, THROAT_QUANTITY, UPSTREAM})

# Defaults a structure's config may override (``spike_max_step_m_per_min``,
# ``stuck_window_min``, ``stuck_min_readings``, ``stuck_tolerance_m``).
DEFAULT_SPIKE_STEP_M_PER_MIN = 0.1
DEFAULT_STUCK_WINDOW = timedelta(hours=1)
DEFAULT_STUCK_MIN_READINGS = 6
# Readings before ``since`` loaded so that a stuck run or a spike at the window's edge is seen.
CHECK_CONTEXT = timedelta(hours=2)

# Input flags that leave no value to compute with.
_UNUSABLE = int(Quality.INVALID | Quality.UNAVAILABLE | Quality.NO_RESPONSE)
# Flow readings left out of a volume: no value, or a value known to be wrong.
_NOT_INTEGRATED = _UNUSABLE | int(Quality.SPIKE)
# Flags of the integrated flow readings that a day's volume inherits.
_INHERITED = int(Quality.OUT_OF_RANGE | Quality.SPIKE | Quality.STUCK | Quality.SUBMERGED
                 | Quality.ESTIMATED)
_INSERT_CHUNK = 2_000

# The job: derive up to HOLD_BACK ago (so a spike's next reading is in before it is judged)
# over a LOOKBACK window (late readings still get their flow), and close yesterday's volumes.
JOB_HOLD_BACK = timedelta(minutes=15)
JOB_LOOKBACK = timedelta(hours=2)


@dataclass(slots=True)
class DeriveResult:
    """What one ``derive_flows`` pass did."""

    structures: int = 0  # structures with a rating that were looked at
    derived: int = 0  # flow readings computed in the window
    inserted: int = 0  # of those, newly stored
    invalid: int = 0  # stored with no value (INVALID / UNAVAILABLE)
    flagged: int = 0  # stored with a value but some flag set
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (structure id, why)

    @property
    def duplicates(self) -> int:
        return self.derived - self.inserted


@dataclass(frozen=True, slots=True)
class TurnoutVolume:
    """One turnout's measured day: volume (None when nothing was covered), coverage, gaps."""

    structure_id: int
    volume_m3: int | None
    coverage: float
    gaps: tuple[Gap, ...]
    quality: int
    stored: bool


@dataclass(frozen=True, slots=True)
class DailyVolumeResult:
    day: date
    volumes: tuple[TurnoutVolume, ...]

    @property
    def stored(self) -> int:
        return sum(1 for v in self.volumes if v.stored)


# --------------------------------------------------------------------------- helpers


def _config(structure: Structure) -> dict[str, Any]:
    try:
        loaded = json.loads(structure.config or "{}")
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _number(config: Mapping[str, Any], key: str, default: float | None = None) -> float | None:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return default
    return float(value)


@dataclass(slots=True)
class _Series:
    """One input channel: value and combined flags (stored | checks) by observation time."""

    points: dict[datetime, tuple[float | None, int]]

    def at(self, when: datetime) -> tuple[float | None, int] | None:
        return self.points.get(when)


def _checks(quantity: str, config: Mapping[str, Any]) -> list[Check]:
    checks: list[Check] = []
    spec = QUANTITIES.get(quantity)
    if spec is not None and (spec.minimum is not None or spec.maximum is not None):
        checks.append(RangeCheck(spec.minimum, spec.maximum))
    step = _number(config, "spike_max_step_m_per_min", DEFAULT_SPIKE_STEP_M_PER_MIN)
    checks.append(SpikeCheck(step or DEFAULT_SPIKE_STEP_M_PER_MIN))
    if quantity in STUCK_CHECKED:
        minutes = _number(config, "stuck_window_min")
        window = timedelta(minutes=minutes) if minutes and minutes > 0 else DEFAULT_STUCK_WINDOW
        count = _number(config, "stuck_min_readings", DEFAULT_STUCK_MIN_READINGS)
        tolerance = _number(config, "stuck_tolerance_m", 0.0)
        checks.append(StuckCheck(window, max(int(count or 2), 2), max(tolerance or 0.0, 0.0)))
    return checks


def _checked(rows: Sequence[tuple[datetime, float | None, int]],
             checks: Sequence[Check]) -> _Series:
    times = [r[0] for r in rows]
    values = [None if r[2] & _UNUSABLE else r[1] for r in rows]
    flags = apply_checks(times, values, checks) if rows else []
    # apply_checks marks a missing value GAP, the same bit as the reading's UNAVAILABLE.
    return _Series({t: (v, stored | int(f))
                    for (t, _, stored), v, f in zip(rows, values, flags, strict=True)})


def _load(session: Session, structure_ids: Sequence[int], quantities: Iterable[str],
          start: datetime, end: datetime
          ) -> dict[tuple[int, str], list[tuple[datetime, float | None, int]]]:
    rows = session.execute(
        select(Reading.structure_id, Reading.quantity, Reading.observed_at, Reading.value,
               Reading.quality)
        .where(Reading.structure_id.in_(list(structure_ids)),
               Reading.quantity.in_(sorted(set(quantities))),
               Reading.observed_at >= start, Reading.observed_at < end)
        .order_by(Reading.structure_id, Reading.quantity, Reading.observed_at)).tuples()
    grouped: dict[tuple[int, str], list[tuple[datetime, float | None, int]]] = defaultdict(list)
    for sid, quantity, observed_at, value, quality in rows:
        grouped[(sid, quantity)].append((observed_at, value, quality))
    return grouped


def _dialect_insert(session: Session) -> Any:
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert
    if name == "sqlite":
        return sqlite.insert
    raise NotImplementedError(f"derived readings do not support {name}")


def _store(session: Session, rows: list[dict[str, Any]]) -> int:
    """Insert readings that are not stored yet; no device-state change (no device spoke)."""
    if not rows:
        return 0
    statement = _dialect_insert(session)(Reading).on_conflict_do_nothing(
        index_elements=["structure_id", "quantity", "observed_at"]).returning(
        Reading.structure_id)
    rows.sort(key=lambda r: (r["structure_id"], r["quantity"], r["observed_at"]))
    inserted = 0
    for i in range(0, len(rows), _INSERT_CHUNK):
        inserted += len(session.connection().execute(statement, rows[i:i + _INSERT_CHUNK]).all())
    return inserted


# --------------------------------------------------------------------------- ratings


@dataclass(frozen=True, slots=True)
class _Flume:
    flume: ParshallFlume
    crest_m: float


@dataclass(frozen=True, slots=True)
class _Gate:
    rating: GateRating
    sill_m: float
    has_downstream: bool


def _rating(structure: Structure, config: Mapping[str, Any]) -> _Flume | _Gate | str:
    """The structure's rating from its config, or why there is none."""
    try:
        if structure.kind == StructureKind.PARSHALL_FLUME:
            width = _number(config, "throat_width_m")
            if width is None:
                return "no throat_width_m in config"
            form = config.get("equation")
            return _Flume(ParshallFlume(width,
                                        form=FlumeForm(form) if isinstance(form, str) else None,
                                        max_head_m=_number(config, "max_head_m")),
                          _number(config, "crest_level_m", 0.0) or 0.0)
        width = _number(config, "gate_width_m")
        cd = _number(config, "discharge_coefficient")
        if width is None or cd is None:
            return "no gate_width_m / discharge_coefficient in config"
        return _Gate(GateRating(width, cd), _number(config, "sill_level_m", 0.0) or 0.0,
                     structure.kind == StructureKind.INTEGRATED_GATE)
    except ValueError as error:
        return str(error)


def _flume_flows(rating: _Flume, series: Mapping[str, _Series], since: datetime,
                 ) -> list[tuple[datetime, float | None, int]]:
    # Both head names may arrive; at one instant the Modbus head_m wins.
    heads: dict[datetime, tuple[float | None, int]] = {}
    for quantity in reversed(HEAD_QUANTITIES):
        if quantity in series:
            heads.update(series[quantity].points)
    throat = series.get(THROAT_QUANTITY)
    out: list[tuple[datetime, float | None, int]] = []
    for when in sorted(t for t in heads if t >= since):
        ha, flags = heads[when]
        hb: float | None = None
        if throat is not None and (point := throat.at(when)) is not None:
            hb, hb_flags = point
            flags |= hb_flags & ~int(Quality.UNAVAILABLE)  # no throat level: free flow assumed
        if ha is None:
            out.append((when, None, flags | int(Quality.UNAVAILABLE)))
            continue
        result = rating.flume.discharge(ha - rating.crest_m,
                                        None if hb is None else hb - rating.crest_m)
        out.append((when, result.q_m3s, flags | int(result.quality)))
    return out


def _gate_flows(rating: _Gate, series: Mapping[str, _Series], since: datetime,
                ) -> list[tuple[datetime, float | None, int]]:
    opening, upstream = series.get(OPENING), series.get(UPSTREAM)
    downstream = series.get(DOWNSTREAM) if rating.has_downstream else None
    if opening is None or upstream is None:
        return []
    out: list[tuple[datetime, float | None, int]] = []
    for when in sorted(t for t in opening.points if t >= since):
        up = upstream.at(when)
        if up is None:
            continue  # the levels of that instant have not come in (yet)
        (e, e_flags), (h1, h1_flags) = opening.points[when], up
        flags = e_flags | h1_flags
        h2: float | None = None
        if downstream is not None:
            down = downstream.at(when)
            if down is None or down[0] is None:
                # A gate with a tailwater gauge and no reading of it: regime unknown.
                out.append((when, None, flags | int(Quality.UNAVAILABLE)))
                continue
            h2 = down[0] - rating.sill_m
            flags |= down[1]
        if e is None or h1 is None:
            out.append((when, None, flags | int(Quality.UNAVAILABLE)))
            continue
        result = rating.rating.flow(e, h1 - rating.sill_m, h2)
        out.append((when, result.q_m3s, flags | int(result.quality)))
    return out


# --------------------------------------------------------------------------- flows


def derive_flows(*, session_factory: sessionmaker[Session], runtime: Runtime,
                 since: datetime, until: datetime) -> DeriveResult:
    """Derive ``flow_m3s`` for every flume and gate from its readings observed in [since, until).

    One transaction; readings from ``CHECK_CONTEXT`` before ``since`` are read so that the
    spike and stuck checks see the run-up. Idempotent: stored readings are never replaced.
    """
    if until <= since:
        raise ValueError("until must come after since")
    result = DeriveResult()
    flow_spec = QUANTITIES[FLOW]
    received_at = runtime.clock.now()
    with session_factory() as session, session.begin():
        structures = session.scalars(
            select(Structure).where(Structure.kind.in_(
                [StructureKind.PARSHALL_FLUME, *GATE_KINDS])).order_by(Structure.id)).all()
        ratings: dict[int, tuple[_Flume | _Gate, dict[str, Any]]] = {}
        for structure in structures:
            config = _config(structure)
            rating = _rating(structure, config)
            if isinstance(rating, str):
                result.skipped.append((structure.id, rating))
            else:
                ratings[structure.id] = (rating, config)
        result.structures = len(ratings)
        if not ratings:
            return result
        raw = _load(session, list(ratings),
                    [*HEAD_QUANTITIES, THROAT_QUANTITY, OPENING, UPSTREAM, DOWNSTREAM],
                    since - CHECK_CONTEXT, until)
        rows: list[dict[str, Any]] = []
        for sid, (rating, config) in ratings.items():
            series = {quantity: _checked(points, _checks(quantity, config))
                      for (s, quantity), points in raw.items() if s == sid}
            flows = (_flume_flows(rating, series, since) if isinstance(rating, _Flume)
                     else _gate_flows(rating, series, since))
            for when, value, flags in flows:
                if value is not None:
                    flags |= int(flow_spec.quality_of(value))
                else:
                    result.invalid += 1
                if value is not None and flags:
                    result.flagged += 1
                rows.append({"structure_id": sid, "quantity": FLOW, "observed_at": when,
                             "value": value, "quality": flags, "source": Source.DERIVED.value,
                             "received_at": received_at})
        result.derived = len(rows)
        result.inserted = _store(session, rows)
    return result


# --------------------------------------------------------------------------- volumes


def _day_window(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), tzinfo=ACCOUNTING_TZ)
    return start, datetime.combine(day + timedelta(days=1), time(0), tzinfo=ACCOUNTING_TZ)


def measured_daily_volumes(*, session_factory: sessionmaker[Session], runtime: Runtime,
                           day: date, max_gap: timedelta = DEFAULT_MAX_GAP
                           ) -> DailyVolumeResult:
    """Integrate each turnout's ``flow_m3s`` over the Beijing-time ``day`` into DailyVolume.

    Readings without a usable value (INVALID, UNAVAILABLE, NO_RESPONSE, SPIKE) are left out;
    stretches longer than ``max_gap`` without readings are gaps, not interpolated. A turnout
    with no covered time gets no row (a missing day is not a zero day). The row for (day,
    structure) is written or replaced, whatever its earlier source, so reruns change nothing.
    """
    start, end = _day_window(day)
    volumes: list[TurnoutVolume] = []
    with session_factory() as session, session.begin():
        turnouts = session.scalars(
            select(Structure).where(Structure.is_turnout.is_(True)).order_by(Structure.id)).all()
        if not turnouts:
            return DailyVolumeResult(day, ())
        wuas: dict[int, int] = {}
        for wua_id, sid in session.execute(
                select(WuaTurnout.wua_id, WuaTurnout.structure_id)
                .order_by(WuaTurnout.wua_id)).tuples():
            wuas.setdefault(sid, wua_id)
        raw = _load(session, [t.id for t in turnouts], [FLOW], start - max_gap, end + max_gap)
        upserts: list[dict[str, Any]] = []
        for turnout in turnouts:
            points = raw.get((turnout.id, FLOW), [])
            used = [p for p in points if p[1] is not None and not p[2] & _NOT_INTEGRATED]
            measured = volumes_by_day([p[0] for p in used], [p[1] for p in used],
                                      first_day=day, last_day=day, max_gap=max_gap)[day]
            inherited = 0
            for when, _, flags in used:
                if start <= when < end:
                    inherited |= flags & _INHERITED
            quality = int(measured.quality) | inherited
            volume = None if measured.volume_m3 is None else round(measured.volume_m3)
            volumes.append(TurnoutVolume(turnout.id, volume, measured.coverage, measured.gaps,
                                         quality, stored=volume is not None))
            if volume is not None:
                upserts.append({"day": day, "structure_id": turnout.id,
                                "canal_id": turnout.canal_id, "wua_id": wuas.get(turnout.id),
                                "water_use": turnout.water_use, "volume_m3": volume,
                                "source_m3": None, "source": VolumeSource.MEASURED,
                                "quality": quality})
        if upserts:
            statement = _dialect_insert(session)(DailyVolume)
            new = statement.excluded
            session.connection().execute(statement.on_conflict_do_update(
                index_elements=["day", "structure_id"],
                set_={"canal_id": new.canal_id, "wua_id": new.wua_id,
                      "water_use": new.water_use, "volume_m3": new.volume_m3,
                      "source_m3": new.source_m3, "source": new.source,
                      "quality": new.quality}), upserts)
    log.debug("measured volumes for %s at %s", day, runtime.clock.now())
    return DailyVolumeResult(day, tuple(volumes))


# --------------------------------------------------------------------------- job


def run_derive_job(runtime: Runtime, stop: threading.Event, interval_s: float = 60) -> None:
    """A worker's loop: derive flows, and recompute yesterday's measured volumes, each pass."""
    while not stop.is_set():
        try:
            now = runtime.clock.now()
            until = now - JOB_HOLD_BACK
            result = derive_flows(session_factory=runtime.session_factory, runtime=runtime,
                                  since=until - JOB_LOOKBACK, until=until)
            if result.inserted:
                log.info("derived %d flow readings (%d without a value, %d flagged)",
                         result.inserted, result.invalid, result.flagged)
            yesterday = now.astimezone(ACCOUNTING_TZ).date() - timedelta(days=1)
            measured_daily_volumes(session_factory=runtime.session_factory, runtime=runtime,
                                   day=yesterday)
        except Exception:  # one bad pass must not end the job
            log.exception("irrigation derive pass failed")
        stop.wait(interval_s)
