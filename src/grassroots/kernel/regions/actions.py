"""Writes to the region tree: one import is one transaction and one audit row.

Everything is validated first, against the stored regions plus the new ones; when anything is
wrong nothing is written and the problems are returned, each naming the region code.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import shapely
from sqlalchemy import select
from sqlalchemy.orm import Session

from grassroots.kernel.audit import record
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Permission, has_permission
from grassroots.kernel.errors import PermissionDenied
from grassroots.kernel.regions.models import LEVEL_ORDER, Region
from grassroots.kernel.regions.validate import (
    Problem,
    ProblemKind,
    RegionSpec,
    validate_regions,
)
from grassroots.kernel.units import unit_of_work as _unit_of_work

if TYPE_CHECKING:
    from grassroots.runtime import Runtime

Actor = User | str
AUDIT_IMPORT = "regions:import"


@dataclass(frozen=True)
class ImportItem:
    """One region to write: its checked spec and its GeoJSON geometry (WGS-84) as stored."""

    spec: RegionSpec
    geometry_json: str


@dataclass
class ImportResult:
    ok: bool
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    levels: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def describe(self, limit: int = 50) -> str:
        if self.ok:
            levels = ", ".join(f"{level} {n}" for level, n in self.levels.items())
            return (f"区域导入成功 / regions imported: {self.created} created, "
                    f"{self.updated} updated, {self.unchanged} unchanged ({levels})")
        lines = [f"区域导入失败，未写入任何数据 / import rejected, nothing stored: "
                 f"{len(self.problems)} problem(s)"]
        for p in self.problems[:limit]:
            lines.append(f"  - {p.code} [{p.kind}] {p.message_zh} / {p.message_en}")
        if len(self.problems) > limit:
            lines.append(f"  … and {len(self.problems) - limit} more")
        return "\n".join(lines)




def _actor_name(actor: Actor) -> str:
    return actor if isinstance(actor, str) else actor.username


def stored_spec(region: Region, code_of: dict[int, str]) -> RegionSpec:
    """A stored region as a spec, for validating it together with new ones."""
    return RegionSpec(
        code=region.code,
        name=region.name,
        level=region.level,
        parent_code=code_of.get(region.parent_id) if region.parent_id is not None else None,
        geometry=shapely.from_geojson(region.geometry),
    )


def compute_paths(parents: dict[int, int | None]) -> dict[int, str]:
    """Materialised paths '/root/…/self/' from id → parent id (cycle-safe)."""
    paths: dict[int, str] = {}

    def path_of(rid: int) -> str:
        chain: list[int] = []
        current: int | None = rid
        while current is not None and current not in paths and current not in chain:
            chain.append(current)
            current = parents.get(current)
        prefix = paths.get(current, "/") if current is not None else "/"
        for node in reversed(chain):
            prefix = f"{prefix}{node}/"
            paths[node] = prefix
        return paths[rid]

    for rid in parents:
        path_of(rid)
    return paths


def import_regions(
    *,
    session: Session,
    runtime: Runtime,
    actor: Actor,
    items: Sequence[ImportItem],
    replace: bool = False,
    problems: Sequence[Problem] = (),
) -> ImportResult:
    """Validate `items` with the stored tree, then create or (with replace) update them all."""
    if isinstance(actor, User) and not has_permission(actor.role, Permission.REGIONS_EDIT):
        raise PermissionDenied()
    found = list(problems)
    with _unit_of_work(session):
        stored = {r.code: r for r in session.scalars(select(Region))}
        code_of = {r.id: r.code for r in stored.values()}
        incoming = {item.spec.code: item for item in items}
        if not replace:
            for code in incoming:
                if code in stored:
                    found.append(Problem(
                        code, ProblemKind.EXISTS.value,
                        f"区域编码 {code} 已存在（更新已有区域请使用 --replace）",
                        f"region code {code} already exists (use --replace to update it)"))
        combined = [stored_spec(r, code_of) for code, r in stored.items()
                    if code not in incoming]
        combined += [item.spec for item in items]
        report = validate_regions(combined)
        found += report.problems
        if found:
            return ImportResult(ok=False, problems=found)
        result = _write(session, stored, items)
        record(session, runtime=runtime, actor=_actor_name(actor), action=AUDIT_IMPORT,
               object_type="region_tree", object_id=_roots(items) or "-",
               detail={"created": result.created, "updated": result.updated,
                       "unchanged": result.unchanged, "levels": result.levels,
                       "replace": replace})
    return result


def _roots(items: Sequence[ImportItem]) -> str:
    codes = {item.spec.code for item in items}
    return ",".join(sorted(i.spec.code for i in items if i.spec.parent_code not in codes))[:200]


def _write(session: Session, stored: dict[str, Region],
           items: Sequence[ImportItem]) -> ImportResult:
    result = ImportResult(ok=True)
    ids = {code: r.id for code, r in stored.items()}
    depth = {level: i for i, level in enumerate(LEVEL_ORDER)}
    ordered = sorted(items, key=lambda item: depth[item.spec.level])
    for level in LEVEL_ORDER:
        batch = [item for item in ordered if item.spec.level == level]
        if not batch:
            continue
        fresh: list[tuple[str, Region]] = []
        for item in batch:
            spec = item.spec
            parent_id = ids[spec.parent_code] if spec.parent_code is not None else None
            min_lon, min_lat, max_lon, max_lat = spec.geometry.bounds
            values: dict[str, Any] = {
                "name": spec.name, "level": spec.level, "parent_id": parent_id,
                "geometry": item.geometry_json, "min_lon": min_lon, "min_lat": min_lat,
                "max_lon": max_lon, "max_lat": max_lat,
            }
            region = stored.get(spec.code)
            if region is None:
                region = Region(code=spec.code, path="/", **values)
                session.add(region)
                fresh.append((spec.code, region))
                result.created += 1
            elif any(getattr(region, k) != v for k, v in values.items()):
                for key, value in values.items():
                    setattr(region, key, value)
                result.updated += 1
            else:
                result.unchanged += 1
        session.flush()  # ids for the next level's parent links
        for code, region in fresh:
            ids[code] = region.id
            stored[code] = region
    result.levels = dict(Counter(item.spec.level.value for item in ordered))
    # Paths depend on every ancestor, so recompute them for the whole tree (a few thousand rows).
    regions = list(stored.values())
    paths = compute_paths({r.id: r.parent_id for r in regions})
    for region in regions:
        if region.path != paths[region.id]:
            region.path = paths[region.id]
    session.flush()
    return result


def _lists(value: Any) -> Any:
    return [_lists(v) for v in value] if isinstance(value, list | tuple) else value


def geometry_json(geometry: dict[str, Any]) -> str:
    """The stored form of a GeoJSON geometry: compact, only type and coordinates."""
    return json.dumps({"type": geometry["type"], "coordinates": _lists(geometry["coordinates"])},
                      separators=(",", ":"), ensure_ascii=False)
