"""Small server-side SVG drawings: a line chart and the canal schematic. No script, no CDN."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from html import escape

from markupsafe import Markup

from grassroots.irrigation.network.models import Canal, CanalLevel, Structure, StructureKind

KIND_COLOURS = {
    StructureKind.PUMP_STATION: "#b3261e",
    StructureKind.INTEGRATED_GATE: "#1d4ed8",
    StructureKind.SMART_HOIST: "#d97706",
    StructureKind.PARSHALL_FLUME: "#047857",
    StructureKind.LEVEL_GAUGE: "#7c3aed",
    StructureKind.SOIL_MOISTURE: "#92400e",
    StructureKind.WEATHER: "#0e7490",
}
LEVEL_COLOURS = {CanalLevel.MAIN: "#1e40af", CanalLevel.BRANCH: "#0891b2",
                 CanalLevel.LATERAL: "#65a30d"}
LEVEL_WIDTHS = {CanalLevel.MAIN: 6, CanalLevel.BRANCH: 4, CanalLevel.LATERAL: 2}


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _t(text: object) -> str:
    return escape(str(text), quote=True)


# --- line chart ------------------------------------------------------------------------------


def _nice_step(span: float, ticks: int = 4) -> float:
    raw = span / ticks if span > 0 else 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _as_seconds(x: date | datetime) -> float:
    if isinstance(x, datetime):
        return x.timestamp()
    return datetime(x.year, x.month, x.day).timestamp()


def line_chart(points: Sequence[tuple[date | datetime, float]], *, title: str, unit: str,
               width: int = 960, height: int = 240, colour: str = "#1d4ed8",
               x_label: Callable[[date | datetime], str] | None = None,
               value_format: Callable[[float], str] = lambda v: f"{v:,.6g}") -> Markup:
    """A polyline of (time, value) points with a y axis of round ticks and dated ends."""
    left, right, top, bottom = 64, 12, 24, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    label = x_label or (lambda x: x.strftime("%m-%d %H:%M") if isinstance(x, datetime)
                        else x.isoformat())
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
             f'style="max-width:{width}px" xmlns="http://www.w3.org/2000/svg" '
             f'aria-label="{_t(title)}">',
             f'<text x="{left}" y="16" class="chart-title" font-size="13" '
             f'font-weight="600">{_t(title)} ({_t(unit)})</text>']
    if not points:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" '
                     'fill="#616e7c">—</text></svg>')
        return Markup("".join(parts))
    xs = [_as_seconds(x) for x, _ in points]
    ys = [y for _, y in points]
    x0, x1 = min(xs), max(xs)
    y_low, y_high = min(0.0, min(ys)), max(ys)
    step = _nice_step(y_high - y_low)
    y_low = math.floor(y_low / step) * step
    y_high = max(math.ceil(y_high / step) * step, y_low + step)

    def px(x: float) -> float:
        return left + (plot_w * (x - x0) / (x1 - x0) if x1 > x0 else plot_w / 2)

    def py(y: float) -> float:
        return top + plot_h * (1 - (y - y_low) / (y_high - y_low))

    tick = y_low
    while tick <= y_high + step / 2:
        y = py(tick)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" '
                     'stroke="#d9e2ec" stroke-width="1"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
                     f'fill="#616e7c">{_t(value_format(tick))}</text>')
        tick += step
    path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys, strict=True))
    parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" '
                 f'points="{path}"/>')
    if len(points) <= 60:
        parts += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2" fill="{colour}"/>'
                  for x, y in zip(xs, ys, strict=True)]
    for x, anchor in ((points[0][0], "start"), (points[-1][0], "end")):
        parts.append(f'<text x="{px(_as_seconds(x)):.1f}" y="{height - 8}" text-anchor="{anchor}"'
                     f' font-size="11" fill="#616e7c">{_t(label(x))}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


# --- schematic -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SchematicItem:
    structure: Structure
    caption: str  # the latest reading or volume, already formatted; "" for none
    title: str  # tooltip: name and kind


def _glyph(kind: StructureKind, x: float, y: float) -> str:
    colour = KIND_COLOURS[kind]
    if kind == StructureKind.PUMP_STATION:
        return f'<rect x="{x - 11:.1f}" y="{y - 11:.1f}" width="22" height="22" fill="{colour}"/>'
    if kind == StructureKind.INTEGRATED_GATE:
        return (f'<rect x="{x - 5:.1f}" y="{y - 7:.1f}" width="10" height="14" '
                f'fill="{colour}"/>')
    if kind == StructureKind.SMART_HOIST:
        return (f'<polygon points="{x:.1f},{y - 8:.1f} {x + 7:.1f},{y + 6:.1f} '
                f'{x - 7:.1f},{y + 6:.1f}" fill="{colour}"/>')
    if kind == StructureKind.PARSHALL_FLUME:
        return (f'<polygon points="{x:.1f},{y - 7:.1f} {x + 7:.1f},{y:.1f} {x:.1f},{y + 7:.1f} '
                f'{x - 7:.1f},{y:.1f}" fill="{colour}"/>')
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{colour}"/>'


def _line_end_lon(canal: Canal) -> tuple[float, float]:
    coordinates = json.loads(canal.geometry)["coordinates"]
    return coordinates[0][0], coordinates[-1][0]


def schematic(canals: Sequence[Canal], items: Sequence[SchematicItem], *,
              labels: dict[str, str]) -> Markup:
    """The main canal left to right, branches up or down at their heads, laterals as stubs.

    Structures sit at their chainage; stations off the canals are drawn in a row below.
    `labels` holds translated words: "pump", "tail".
    """
    width, height = 1280, 780
    mid = 380
    x_start, x_end = 110, width - 60
    by_id = {c.id: c for c in canals}
    main = next((c for c in canals if c.level == CanalLevel.MAIN), None)
    parts = [f'<svg class="schematic" viewBox="0 0 {width} {height}" width="100%" role="img" '
             'xmlns="http://www.w3.org/2000/svg" font-size="10">']
    if main is None:
        parts.append("</svg>")
        return Markup("".join(parts))
    branches = [c for c in canals if c.parent_id == main.id and c.level == CanalLevel.BRANCH]
    longest = max((b.length_km for b in branches), default=1.0)
    reach = mid - 90
    heads = {s.structure.outlet_canal_id: s.structure for s in items
             if s.structure.outlet_canal_id is not None}

    def main_x(km: float) -> float:
        return x_start + (x_end - x_start) * min(max(km, 0.0), main.length_km) / main.length_km

    # The direction a branch runs: alternate, unless its geometry says south/north plainly.
    direction: dict[int, int] = {}
    for n, branch in enumerate(sorted(branches, key=lambda b: b.code)):
        coordinates = json.loads(branch.geometry)["coordinates"]
        dy = coordinates[-1][1] - coordinates[0][1]
        direction[branch.id] = (1 if dy < 0 else -1) if abs(dy) > 1e-6 else (1 if n % 2 else -1)
    branch_x: dict[int, float] = {}
    for branch in branches:
        head = heads.get(branch.id)
        branch_x[branch.id] = main_x(head.chainage_km or 0.0) if head else main_x(0.0)

    def branch_point(branch: Canal, km: float) -> tuple[float, float]:
        return branch_x[branch.id], mid + direction[branch.id] * (20 + reach * km / longest)

    # canals
    parts.append(f'<line x1="{x_start}" y1="{mid}" x2="{x_end}" y2="{mid}" '
                 f'stroke="{LEVEL_COLOURS[CanalLevel.MAIN]}" stroke-width="6">'
                 f'<title>{_t(main.name)}</title></line>')
    parts.append(f'<text x="{x_start}" y="{mid + 86}" font-size="13" '
                 f'font-weight="600">{_t(main.name)} {_num(main.length_km)} km</text>')
    for branch in branches:
        x, y0 = branch_x[branch.id], mid
        _, y1 = branch_point(branch, branch.length_km)
        parts.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y1:.1f}" '
                     f'stroke="{LEVEL_COLOURS[CanalLevel.BRANCH]}" stroke-width="4">'
                     f'<title>{_t(branch.name)}</title></line>')
        ty = y1 + (16 if direction[branch.id] > 0 else -8)
        parts.append(f'<text x="{x:.1f}" y="{ty:.1f}" text-anchor="middle" font-size="12" '
                     f'font-weight="600">{_t(branch.name)}</text>')
    # laterals: a stub from the turnout, east or west as on the map
    stubs: dict[int, tuple[float, float, int]] = {}
    for item in items:
        s = item.structure
        lateral = by_id.get(s.outlet_canal_id) if s.outlet_canal_id else None
        parent = by_id.get(s.canal_id) if s.canal_id else None
        if lateral is None or lateral.level != CanalLevel.LATERAL or parent is None \
                or parent.id not in branch_x:
            continue
        start_lon, end_lon = _line_end_lon(lateral)
        side = 1 if end_lon >= start_lon else -1
        x, y = branch_point(parent, s.chainage_km or 0.0)
        stubs[s.id] = (x, y, side)
        parts.append(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x + side * 48:.1f}" y2="{y:.1f}" '
                     f'stroke="{LEVEL_COLOURS[CanalLevel.LATERAL]}" stroke-width="2">'
                     f'<title>{_t(lateral.name)}</title></line>')

    # structures, main-canal ones in chainage order so their labels can be staggered
    off_canal: list[SchematicItem] = []
    pump_drawn = False
    stub_side = {(round(x), round(y)): side for x, y, side in stubs.values()}
    last_on_main = {-1: -1e9, 1: -1e9}  # per side of the main canal: x of the last label
    tier = {-1: 0, 1: 0}
    main_items = sorted((i for i in items if i.structure.canal_id == main.id
                         and i.structure.id not in stubs),
                        key=lambda i: i.structure.chainage_km or 0.0)
    others = [i for i in items if i not in main_items]
    for n, item in enumerate(main_items):
        x = main_x(item.structure.chainage_km or 0.0)
        side = -1 if n % 2 else 1
        feeds = item.structure.outlet_canal_id
        if feeds in direction:  # a branch head gate: label on the side the branch leaves free
            side = -direction[feeds]
        # Neighbours closer than a label's width move one tier further from the canal.
        tier[side] = tier[side] + 1 if x - last_on_main[side] < 70 and tier[side] < 2 else 0
        last_on_main[side] = x
        offset = 18 + 22 * tier[side]
        parts.append(_linked(item, x, mid, x + 6, "start",
                             mid + offset if side > 0 else mid - offset - 11))
    for item in others:
        s = item.structure
        canal = by_id.get(s.canal_id) if s.canal_id else None
        if s.kind == StructureKind.PUMP_STATION:
            x, y = x_start - 60, float(mid)
            parts.append(f'<line x1="{x + 11}" y1="{mid}" x2="{x_start}" y2="{mid}" '
                         'stroke="#b3261e" stroke-width="3" stroke-dasharray="6 3"/>')
            parts.append(_linked(item, x, y, x - 14, "start", mid + 26))
            pump_drawn = True
        elif s.id in stubs:
            # A turnout: code above its lateral's stub, caption below, clear of the branch.
            x, y, side = stubs[s.id]
            x += side * (14 if s.kind == StructureKind.PARSHALL_FLUME else 0)
            parts.append(_linked(item, x, y, x + side * 10, "start" if side > 0 else "end",
                                 y - 5))
        elif canal is not None and canal.id in branch_x:
            x, y = branch_point(canal, s.chainage_km or 0.0)
            # Beside the branch, on the side away from a stub at the same place.
            side = -stub_side.get((round(x), round(y)), -1)
            parts.append(_linked(item, x, y, x + side * 10, "start" if side > 0 else "end",
                                 y + 3))
        else:
            off_canal.append(item)
    if pump_drawn:
        parts.append(f'<text x="{x_start - 60}" y="{mid - 18}" text-anchor="middle" '
                     f'font-size="11">{_t(labels.get("pump", ""))}</text>')
    for n, item in enumerate(off_canal):
        x = 80 + n * 200
        parts.append(_linked(item, x, height - 26, x + 10, "start", height - 23))
    parts.append("</svg>")
    return Markup("".join(parts))


def _linked(item: SchematicItem, x: float, y: float, text_x: float, anchor: str,
            text_y: float) -> str:
    """A structure's glyph, its code at (text_x, text_y) and its caption just below, linked."""
    s = item.structure
    caption = (f'<text x="{text_x:.1f}" y="{text_y + 11:.1f}" text-anchor="{anchor}" '
               f'fill="#1f2933" font-size="9">{_t(item.caption)}</text>' if item.caption else "")
    return (f'<a href="/irrigation/stations/{_t(s.code)}" class="node node-{s.kind.value}">'
            f'<title>{_t(item.title)}</title>{_glyph(s.kind, x, y)}'
            f'<text x="{text_x:.1f}" y="{text_y:.1f}" text-anchor="{anchor}" '
            f'fill="#616e7c">{_t(s.code)}</text>{caption}</a>')
