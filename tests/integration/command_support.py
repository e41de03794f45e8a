"""Factories for the command-loop tests: users, a small region tree, a fake locator and calendar.

The real WorkingCalendar (kernel.calendar, with the official holidays) is wired in by the lead;
these tests only need something with add_working_hours/add_working_days over Mon–Fri 9–17.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.orm import Session

from grassroots.command import actions
from grassroots.command.models import (
    Assignment,
    Deadline,
    DutyShift,
    Incident,
    IncidentNumberCounter,
    IncidentTransition,
    ResponderStatus,
)
from grassroots.command.states import Actor, ResponderState, SystemActor, UnitType
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Role
from grassroots.kernel.regions.models import LEVEL_ORDER, Region, RegionLevel
from grassroots.runtime import Runtime

BEIJING = ZoneInfo("Asia/Shanghai")
ADMIN = SystemActor("system:test")
_counter = itertools.count(1)


class FakeCalendar:
    """Mon–Fri, 09:00–17:00 Beijing time, no holidays."""

    def _is_working(self, day: datetime) -> bool:
        return day.weekday() < 5

    def _next_open(self, local: datetime) -> datetime:
        while True:
            if self._is_working(local):
                opens = local.replace(hour=9, minute=0, second=0, microsecond=0)
                closes = local.replace(hour=17, minute=0, second=0, microsecond=0)
                if local < opens:
                    return opens
                if local < closes:
                    return local
            local = (local + timedelta(days=1)).replace(hour=9, minute=0, second=0,
                                                          microsecond=0)

    def add_working_hours(self, start: datetime, hours: int, /) -> datetime:
        local = self._next_open(start.astimezone(BEIJING))
        left = timedelta(hours=hours)
        while True:
            closes = local.replace(hour=17, minute=0, second=0, microsecond=0)
            if local + left <= closes:
                return (local + left).astimezone(UTC)
            left -= closes - local
            local = self._next_open(closes)

    def add_working_days(self, start: datetime, days: int, /) -> datetime:
        """The end of the n-th working day after the start day, like kernel.calendar's."""
        local = start.astimezone(BEIJING)
        while days > 0:
            local += timedelta(days=1)
            if self._is_working(local):
                days -= 1
        return datetime.combine(local.date(), time.max, tzinfo=BEIJING).astimezone(UTC)


CALENDAR = FakeCalendar()


def make_user(session: Session, role: Role, name: str | None = None,
              scope_region_id: int | None = None) -> User:
    username = name or f"{role.value}-{next(_counter)}"
    now = datetime(2026, 1, 1, tzinfo=UTC)
    user = User(username=username, display_name=username, role=role,
                scope_region_id=scope_region_id, password_hash="x", created_at=now,
                password_changed_at=now)
    session.add(user)
    session.flush()
    return user


def _square(lon0: float, lat0: float, lon1: float, lat1: float) -> str:
    ring = [[lon0, lat0], [lon1, lat0], [lon1, lat1], [lon0, lat1], [lon0, lat0]]
    return json.dumps({"type": "Polygon", "coordinates": [ring]})


def make_region(session: Session, level: RegionLevel, bbox: tuple[float, float, float, float],
                parent: Region | None = None, code: str | None = None) -> Region:
    region = Region(code=code or f"{level.value}-{next(_counter)}", name=code or level.value,
                    level=level, parent_id=parent.id if parent else None,
                    geometry=_square(*bbox), min_lon=bbox[0], min_lat=bbox[1],
                    max_lon=bbox[2], max_lat=bbox[3])
    session.add(region)
    session.flush()
    region.path = (parent.path if parent else "/") + f"{region.id}/"
    session.flush()
    return region


@dataclass
class Area:
    """A street with two zones side by side; each zone has one grid holding one micro-grid."""

    street: Region
    zone_a: Region
    zone_b: Region
    micro_a: Region
    micro_b: Region
    regions: list[Region]

    def locate(self, lon: float, lat: float) -> Sequence[Region] | None:
        found = [r for r in self.regions
                 if r.min_lon <= lon < r.max_lon and r.min_lat <= lat < r.max_lat]
        return sorted(found, key=lambda r: LEVEL_ORDER.index(r.level), reverse=True) or None


# Points inside zone A and zone B.
A_LON, A_LAT = 106.255, 29.285
B_LON, B_LAT = 106.275, 29.285


def make_area(session: Session) -> Area:
    district = make_region(session, RegionLevel.DISTRICT, (106.0, 29.0, 106.5, 29.5))
    street = make_region(session, RegionLevel.STREET, (106.25, 29.28, 106.29, 29.30), district)
    zone_a = make_region(session, RegionLevel.ZONE, (106.25, 29.28, 106.27, 29.30), street)
    zone_b = make_region(session, RegionLevel.ZONE, (106.27, 29.28, 106.29, 29.30), street)
    grid_a = make_region(session, RegionLevel.GRID, (106.25, 29.28, 106.27, 29.30), zone_a)
    grid_b = make_region(session, RegionLevel.GRID, (106.27, 29.28, 106.29, 29.30), zone_b)
    micro_a = make_region(session, RegionLevel.MICRO_GRID, (106.25, 29.28, 106.27, 29.30), grid_a)
    micro_b = make_region(session, RegionLevel.MICRO_GRID, (106.27, 29.28, 106.29, 29.30), grid_b)
    session.commit()
    return Area(street, zone_a, zone_b, micro_a, micro_b,
                [district, street, zone_a, zone_b, grid_a, grid_b, micro_a, micro_b])


def put_on_duty(session: Session, user: User, zone: Region, at: datetime,
                unit_type: UnitType = UnitType.ZONE_TEAM,
                position: tuple[float, float] | None = None,
                state: ResponderState = ResponderState.AVAILABLE,
                hours: int = 8) -> DutyShift:
    shift = DutyShift(user_id=user.id, zone_id=zone.id, unit_type=unit_type,
                      starts_at=at - timedelta(hours=1), ends_at=at + timedelta(hours=hours))
    session.add(shift)
    session.add(ResponderStatus(user_id=user.id, state=state,
                                lon=position[0] if position else None,
                                lat=position[1] if position else None,
                                position_at=at if position else None, updated_at=at))
    session.commit()
    return shift


def load_categories(session: Session, runtime: Runtime) -> None:
    actions.load_default_categories(session=session, runtime=runtime, actor=ADMIN)


def report(session: Session, runtime: Runtime, area: Area, *,
           category: str = "city_env.exposed_garbage", lon: float = A_LON, lat: float = A_LAT,
           actor: Actor = ADMIN, channel: str = "grid_worker",
           **kwargs: Any) -> actions.IntakeResult:
    """Intake (from a grid worker's app by default) with the area's locator and fake calendar."""
    return actions.intake(session=session, runtime=runtime, actor=actor, channel=channel,
                          category_code=category, calendar=CALENDAR, locator=area.locate,
                          lon=lon, lat=lat, **kwargs)


def offset(lon: float, lat: float, east_m: float) -> tuple[float, float]:
    """A point `east_m` metres east of (lon, lat)."""
    return lon + east_m / (111_320.0 * math.cos(math.radians(lat))), lat


def start_over(session: Session) -> None:
    """Forget the incidents (not the audit trail) and free everyone, so that the same reports
    can be taken again from the same start."""
    for model in (IncidentTransition, Deadline, Assignment, Incident, IncidentNumberCounter):
        session.execute(sa.delete(model))
    session.execute(sa.update(ResponderStatus).values(state=ResponderState.AVAILABLE))
    session.commit()
