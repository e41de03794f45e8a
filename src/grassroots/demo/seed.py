"""The demo: Shuangfu street (7 zones, 129 grids, 997 micro-grids), its people and accounts.

Idempotent: running it again adds only what is missing, so `grassroots demo` can be run twice.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from grassroots.kernel.addresses.demo import seed_demo_addresses
from grassroots.kernel.addresses.models import StandardAddress
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Role
from grassroots.kernel.clock import DISPLAY_TZ
from grassroots.kernel.regions.models import Region, RegionLevel
from grassroots.runtime import Runtime

# Demo only: a real deployment creates its own accounts (`grassroots user create`).
DEMO_PASSWORD = "Shuangfu@2026"
RESPONDERS_PER_ZONE = 6
ROSTER_DAYS_BACK = 1
ROSTER_DAYS_AHEAD = 14


@dataclass(frozen=True)
class DemoAccount:
    username: str
    display_name: str
    role: Role
    scope: str | None  # "street", "zone:1", "grid:1", "micro_grid:1" or None for the platform


DEMO_ACCOUNTS = (
    DemoAccount("sysadmin", "系统管理员", Role.SYSTEM_ADMIN, None),
    DemoAccount("secadmin", "安全管理员", Role.SECURITY_ADMIN, None),
    DemoAccount("auditadmin", "审计管理员", Role.AUDIT_ADMIN, None),
    DemoAccount("leader", "街道领导 李明", Role.STREET_LEADER, "street"),
    DemoAccount("dispatcher", "指挥中心调度员 王芳", Role.DISPATCHER, "street"),
    DemoAccount("zoneleader", "片区长 黄敏", Role.ZONE_LEADER, "zone:1"),
    DemoAccount("responder", "片区值班队员 张伟", Role.ZONE_RESPONDER, "zone:1"),
    DemoAccount("gridworker", "网格员 刘洋", Role.GRID_WORKER, "grid:1"),
    DemoAccount("buildinghead", "楼栋长 陈静", Role.BUILDING_HEAD, "micro_grid:1"),
    DemoAccount("mediator", "调解员 赵磊", Role.MEDIATOR, "street"),
    DemoAccount("partysec", "社区党委书记 孙丽", Role.PARTY_SECRETARY,
                "zone:1"),
    DemoAccount("owners", "业委会委员 周强", Role.OWNERS_COMMITTEE, "zone:1"),
    DemoAccount("irrigation", "灌区调度员 马军", Role.IRRIGATION_DISPATCHER, None),
    DemoAccount("gateop", "闸门操作员 杨帆", Role.GATE_OPERATOR, None),
    DemoAccount("viewer", "只读用户", Role.VIEWER, "street"),
    DemoAccount("district", "区城市管理局 吴刚", Role.DISTRICT_DEPARTMENT, "district"),
)

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华兰红玉梅建国志文斌鹏辉宇浩"


class Progress:
    """A one-line progress bar on stderr for the slow steps."""

    def __init__(self, label: str, total: int, enabled: bool) -> None:
        self.label, self.total, self.enabled, self.done = label, max(total, 1), enabled, 0

    def step(self, n: int = 1) -> None:
        self.done += n
        if self.enabled and (self.done == self.total or self.done % max(self.total // 50, 1) == 0):
            filled = int(30 * self.done / self.total)
            sys.stderr.write(f"\r  {self.label:<22} [{'#' * filled}{'.' * (30 - filled)}] "
                             f"{self.done}/{self.total}")
            if self.done >= self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def _person_name(i: int) -> str:
    given = GIVEN[(i * 7) % len(GIVEN)] + GIVEN[(i * 13 + 5) % len(GIVEN)]
    return SURNAMES[i % len(SURNAMES)] + given


def seed_demo(runtime: Runtime, *, progress: bool = False) -> dict[str, Any]:
    """Load everything the demo shows; returns counts of what is there afterwards."""
    with runtime.session_factory() as session:
        _seed_regions(session, runtime, progress)
        regions = _regions_by_level(session)
        _seed_accounts(session, runtime, regions, progress)
        _seed_building_heads(session, runtime, regions, progress)
        seed_demo_addresses(session=session, runtime=runtime, progress=progress)
        responders = _seed_zone_staff(session, runtime, regions, progress)
        shifts = _seed_rosters(session, runtime, responders, progress)
        counts_categories = _seed_categories(session, runtime)
        _seed_open311_key(session, runtime)
        counts: dict[str, Any] = {level.value: len(regions.get(level, [])) for level in RegionLevel}
        counts["users"] = session.scalar(select(func.count(User.id))) or 0
        counts["zone_staff"] = len(responders)
        counts["shifts"] = shifts
        counts["standard_addresses"] = session.scalar(select(func.count(StandardAddress.id)))
        counts["incident_categories"] = counts_categories
    counts["irrigation"] = _seed_irrigation(runtime, progress)
    return counts


def _seed_categories(session: Session, runtime: Runtime) -> int:
    """The editable default catalogue of incident categories (idempotent, keeps edits)."""
    from grassroots.command.actions import load_default_categories
    from grassroots.command.models import IncidentCategory
    from grassroots.command.states import SystemActor

    load_default_categories(session=session, runtime=runtime, actor=SystemActor("system:seed"))
    return session.scalar(select(func.count(IncidentCategory.id))) or 0


def _seed_open311_key(session: Session, runtime: Runtime) -> None:
    """The demo's Open311 api_key (printed in the README); a real deployment issues its own."""
    from grassroots.command.open311.keys import ensure_demo_key

    ensure_demo_key(session=session, runtime=runtime)


def _seed_irrigation(runtime: Runtime, progress: bool) -> dict[str, Any]:
    from grassroots.irrigation.demo import seed_irrigation_demo

    if progress:
        sys.stderr.write("  building the demo irrigation district and its simulated year…\n")
    return seed_irrigation_demo(runtime, progress=progress)


def _seed_regions(session: Session, runtime: Runtime, progress: bool) -> None:
    from grassroots.demo.regions import build_demo_regions
    from grassroots.kernel.regions.geojson import import_geojson

    if session.scalar(select(func.count(Region.id))):
        return
    if progress:
        sys.stderr.write("  building the demo street's regions…\n")
    result = import_geojson(session=session, actor="seed", data=build_demo_regions(),
                            runtime=runtime)
    if not result.ok:
        raise RuntimeError("demo regions failed validation:\n" + result.describe())


def _regions_by_level(session: Session) -> dict[RegionLevel, list[Region]]:
    grouped: dict[RegionLevel, list[Region]] = {}
    for region in session.scalars(select(Region).order_by(Region.code)):
        grouped.setdefault(region.level, []).append(region)
    return grouped


def _scope_code(regions: dict[RegionLevel, list[Region]], scope: str | None) -> str | None:
    if scope is None:
        return None
    level, _, number = scope.partition(":")
    index = int(number) - 1 if number else 0
    return regions[RegionLevel(level)][index].code


def _existing_usernames(session: Session) -> set[str]:
    return set(session.scalars(select(User.username)))


def _seed_accounts(session: Session, runtime: Runtime,
                   regions: dict[RegionLevel, list[Region]], progress: bool) -> None:
    from grassroots.kernel.auth.actions import create_user

    existing = _existing_usernames(session)
    bar = Progress("demo accounts", len(DEMO_ACCOUNTS), progress)
    for account in DEMO_ACCOUNTS:
        if account.username not in existing:
            create_user(session=session, actor="seed", username=account.username,
                        display_name=account.display_name, role=account.role,
                        scope_code=_scope_code(regions, account.scope), password=DEMO_PASSWORD,
                        runtime=runtime)
        bar.step()


def _seed_building_heads(session: Session, runtime: Runtime,
                         regions: dict[RegionLevel, list[Region]], progress: bool) -> None:
    """One volunteer building head per micro-grid; they sign in later through WeChat binding."""
    from grassroots.kernel.auth.actions import create_user

    micro_grids = regions.get(RegionLevel.MICRO_GRID, [])
    existing = _existing_usernames(session)
    bar = Progress("building heads", len(micro_grids), progress)
    for i, micro in enumerate(micro_grids, start=1):
        username = f"bh{i:04d}"
        if username not in existing:
            create_user(session=session, actor="seed", username=username,
                        display_name=f"楼栋长 {_person_name(i)}", role=Role.BUILDING_HEAD,
                        scope_code=micro.code, password=None, runtime=runtime,
                        phone=f"139{(20230000 + i * 7919) % 100000000:08d}")
        bar.step()


def _seed_zone_staff(session: Session, runtime: Runtime,
                     regions: dict[RegionLevel, list[Region]], progress: bool) -> list[User]:
    """Full-time on-duty staff: RESPONDERS_PER_ZONE per zone (7 zones → 42, the seed's 40+)."""
    from grassroots.kernel.auth.actions import create_user

    zones = regions.get(RegionLevel.ZONE, [])
    existing = _existing_usernames(session)
    bar = Progress("zone on-duty staff", len(zones) * RESPONDERS_PER_ZONE, progress)
    staff: list[User] = []
    for z, zone in enumerate(zones, start=1):
        for k in range(1, RESPONDERS_PER_ZONE + 1):
            username = f"duty{z}{k:02d}"
            if username not in existing:
                create_user(session=session, actor="seed", username=username,
                            display_name=f"值班队员 {_person_name(100 + z * 10 + k)}",
                            role=Role.ZONE_RESPONDER, scope_code=zone.code, password=None,
                            runtime=runtime, phone=f"138{(50230000 + z * 997 + k) % 10**8:08d}")
            bar.step()
    usernames = [f"duty{z}{k:02d}" for z in range(1, len(zones) + 1)
                 for k in range(1, RESPONDERS_PER_ZONE + 1)]
    staff = list(session.scalars(select(User).where(User.username.in_(usernames))))
    staff += list(session.scalars(select(User).where(User.username == "responder")))
    return staff


def _seed_rosters(session: Session, runtime: Runtime, staff: list[User], progress: bool) -> int:
    """Two 12-hour shifts a day (08:00–20:00, 20:00–08:00), half of each zone's staff on each."""
    try:
        from grassroots.command.actions import create_duty_shift
    except ImportError:  # the command loop is not installed in this build
        return 0
    from grassroots.command.models import DutyShift
    from grassroots.command.states import SystemActor

    if session.scalar(select(func.count(DutyShift.id))):
        return session.scalar(select(func.count(DutyShift.id))) or 0
    today = runtime.clock.now().astimezone(DISPLAY_TZ).date()
    days = [today + timedelta(days=d) for d in range(-ROSTER_DAYS_BACK, ROSTER_DAYS_AHEAD + 1)]
    bar = Progress("duty rosters", len(days), progress)
    count = 0
    for day in days:
        day_start = datetime.combine(day, time(8, 0), DISPLAY_TZ)
        for i, user in enumerate(sorted(staff, key=lambda u: u.username)):
            if user.scope_region_id is None:
                continue
            on_day = (i + day.toordinal()) % 2 == 0
            starts = day_start if on_day else day_start + timedelta(hours=12)
            create_duty_shift(session=session, runtime=runtime, actor=SystemActor("seed"),
                              user_id=user.id, zone_id=user.scope_region_id,
                              unit_type="zone_team", starts_at=starts,
                              ends_at=starts + timedelta(hours=12))
            count += 1
        bar.step()
    return count
