"""Region validation names each offending code and says what is wrong, in Chinese and English."""

from __future__ import annotations

from shapely.geometry import Polygon, box

from grassroots.kernel.regions.models import RegionLevel as L
from grassroots.kernel.regions.validate import RegionSpec, validate_regions

D = 0.01  # about a kilometre


def _tree() -> list[RegionSpec]:
    """A street tiled by one zone, two grids, four micro-grids, and one building."""
    return [
        RegionSpec("D", "区", L.DISTRICT, None, box(106.0, 29.0, 106.0 + 6 * D, 29.0 + 6 * D)),
        RegionSpec("S", "街道", L.STREET, "D", box(106.0, 29.0, 106.0 + 4 * D, 29.0 + 2 * D)),
        RegionSpec("S-Z1", "片区", L.ZONE, "S", box(106.0, 29.0, 106.0 + 4 * D, 29.0 + 2 * D)),
        RegionSpec("S-Z1-G1", "网格1", L.GRID, "S-Z1",
                   box(106.0, 29.0, 106.0 + 2 * D, 29.0 + 2 * D)),
        RegionSpec("S-Z1-G2", "网格2", L.GRID, "S-Z1",
                   box(106.0 + 2 * D, 29.0, 106.0 + 4 * D, 29.0 + 2 * D)),
        RegionSpec("S-Z1-G1-M1", "微1", L.MICRO_GRID, "S-Z1-G1", box(106.0, 29.0, 106.02, 29.01)),
        RegionSpec("S-Z1-G1-M2", "微2", L.MICRO_GRID, "S-Z1-G1", box(106.0, 29.01, 106.02, 29.02)),
        RegionSpec("S-Z1-G1-M1-B1", "1栋", L.BUILDING, "S-Z1-G1-M1",
                   box(106.005, 29.002, 106.006, 29.003)),
    ]


def _replace(specs: list[RegionSpec], code: str, **changes: object) -> list[RegionSpec]:
    out = []
    for s in specs:
        if s.code == code:
            values = {"code": s.code, "name": s.name, "level": s.level,
                      "parent_code": s.parent_code, "geometry": s.geometry, **changes}
            s = RegionSpec(**values)  # type: ignore[arg-type]
        out.append(s)
    return out


def test_a_well_formed_tree_passes() -> None:
    report = validate_regions(_tree())
    assert report.ok, report.describe()
    assert "valid" in report.describe()


def test_overlapping_siblings_are_reported_with_both_codes() -> None:
    specs = _replace(_tree(), "S-Z1-G1-M2", geometry=box(106.0, 29.005, 106.02, 29.02))
    report = validate_regions(specs)
    overlap = [p for p in report.problems if p.kind == "overlap"]
    assert len(overlap) == 1
    assert "S-Z1-G1-M1" in overlap[0].message_en and "S-Z1-G1-M2" in overlap[0].message_en
    assert "重叠" in overlap[0].message_zh


def test_a_child_sticking_out_of_its_parent_is_reported() -> None:
    specs = _replace(_tree(), "S-Z1-G1-M1-B1", geometry=box(106.019, 29.002, 106.03, 29.003))
    report = validate_regions(specs)
    assert report.codes("outside_parent") == {"S-Z1-G1-M1-B1"}


def test_a_hole_in_the_micro_grid_cover_of_a_grid_is_a_gap_on_the_grid() -> None:
    specs = _replace(_tree(), "S-Z1-G1-M2", geometry=box(106.0, 29.01, 106.015, 29.02))
    report = validate_regions(specs)
    assert report.codes("gap") == {"S-Z1-G1"}
    assert "m²" in next(p.message_en for p in report.problems if p.kind == "gap")


def test_buildings_need_not_tile_and_a_childless_grid_is_no_gap() -> None:
    report = validate_regions(_tree())  # G2 has no micro-grids, M2 no buildings
    assert report.codes("gap") == set()


def test_a_grid_directly_under_a_street_breaks_the_level_order() -> None:
    specs = _replace(_tree(), "S-Z1-G2", parent_code="S")
    report = validate_regions(specs)
    assert "S-Z1-G2" in report.codes("level_order")
    problem = next(p for p in report.problems if p.kind == "level_order")
    assert "zone" in problem.message_en and "层级错误" in problem.message_zh


def test_unknown_parents_duplicates_and_bowties_are_each_named() -> None:
    bowtie = Polygon([(106.0, 29.0), (106.01, 29.01), (106.01, 29.0), (106.0, 29.01)])
    specs = [
        *_tree(),
        RegionSpec("X", "孤儿", L.GRID, "NOPE", box(106.0, 29.0, 106.01, 29.01)),
        RegionSpec("S-Z1-G1-M1-B1", "重复", L.BUILDING, "S-Z1-G1-M1",
                   box(106.001, 29.001, 106.002, 29.002)),
    ]
    specs = _replace(specs, "S-Z1-G1-M2", geometry=bowtie)
    report = validate_regions(specs)
    assert report.codes("unknown_parent") == {"X"}
    assert report.codes("duplicate_code") == {"S-Z1-G1-M1-B1"}
    assert report.codes("invalid_geometry") == {"S-Z1-G1-M2"}
    assert "Self-intersection" in report.describe()


def test_a_building_without_a_parent_is_not_a_root() -> None:
    specs = [*_tree(), RegionSpec("B9", "9栋", L.BUILDING, None, box(0, 0, 1, 1))]
    assert validate_regions(specs).codes("level_order") == {"B9"}
