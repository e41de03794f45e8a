"""The standard-address register and door plates on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import json
from importlib import resources
from typing import Any

import pytest
import shapely
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from grassroots.kernel.addresses import queries
from grassroots.kernel.addresses.actions import (
    AddressImportFailed,
    import_addresses,
    issue_plate,
    register_address,
    retire_address,
    revoke_plate,
)
from grassroots.kernel.addresses.demo import seed_demo_addresses
from grassroots.kernel.addresses.models import DoorPlate, StandardAddress
from grassroots.kernel.audit.chain import verify_chain
from grassroots.kernel.audit.models import AuditRow
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Role
from grassroots.kernel.errors import Conflict, NotFound, PermissionDenied, ValidationFailed
from grassroots.kernel.regions.geojson import import_geojson
from grassroots.kernel.regions.models import Region
from grassroots.runtime import Runtime

X, Y = 106.20, 29.30
ADDRESS = "重庆市江津区双福街道福城路1号"
_users = itertools.count(1)


def _square(x0: float, y0: float, x1: float, y1: float) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def _feature(code: str, name: str, level: str, parent: str | None,
             geometry: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Feature", "geometry": geometry,
            "properties": {"code": code, "name": name, "level": level, "parent_code": parent}}


def _tree() -> dict[str, Any]:
    """District ⊃ street ⊃ zone ⊃ grid ⊃ micro-grid ⊃ two buildings."""
    return {"type": "FeatureCollection", "features": [
        _feature("D", "江津区", "district", None, _square(X - 0.01, Y - 0.01, X + 0.03, Y + 0.03)),
        _feature("S", "双福街道", "street", "D", _square(X, Y, X + 0.02, Y + 0.02)),
        _feature("S-Z1", "福城片区", "zone", "S", _square(X, Y, X + 0.02, Y + 0.02)),
        _feature("S-Z1-G1", "第1网格", "grid", "S-Z1", _square(X, Y, X + 0.02, Y + 0.02)),
        _feature("S-Z1-G1-M1", "微网格1-1", "micro_grid", "S-Z1-G1",
                 _square(X, Y, X + 0.02, Y + 0.02)),
        _feature("S-Z1-G1-M1-B1", "1栋", "building", "S-Z1-G1-M1",
                 _square(X + 0.002, Y + 0.002, X + 0.004, Y + 0.004)),
        _feature("S-Z1-G1-M1-B2", "2栋", "building", "S-Z1-G1-M1",
                 _square(X + 0.010, Y + 0.010, X + 0.012, Y + 0.013)),
    ]}


@pytest.fixture
def regions(session: Session, runtime: Runtime) -> dict[str, Region]:
    result = import_geojson(session=session, actor="cli", data=_tree(), runtime=runtime)
    assert result.ok, result.describe()
    return {r.code: r for r in session.scalars(select(Region))}


def _user(session: Session, runtime: Runtime, role: Role) -> User:
    now = runtime.clock.now()
    user = User(username=f"{role.value}-{next(_users)}", display_name="测试用户", role=role,
                password_hash="-", created_at=now, password_changed_at=now)
    session.add(user)
    session.commit()
    return user


def _register(session: Session, runtime: Runtime, code: str = "A1", text: str = ADDRESS,
              lon: float = X + 0.003, lat: float = Y + 0.003) -> StandardAddress:
    return register_address(session=session, runtime=runtime, actor="cli", code=code, text=text,
                            lon=lon, lat=lat)


def _count(session: Session, model: type) -> int:
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _audit(session: Session, action: str) -> list[AuditRow]:
    return list(session.scalars(select(AuditRow).where(AuditRow.action == action)))


# --- register ----------------------------------------------------------------------------------


def test_registering_stores_the_address_in_its_building_with_one_audit_row(
        session: Session, runtime: Runtime, regions: dict[str, Region]) -> None:
    address = _register(session, runtime, text=" 重庆市江津区·双福街道 福城路1号 ")
    stored = session.get(StandardAddress, address.id)
    assert stored is not None
    assert stored.text == "重庆市江津区·双福街道 福城路1号"
    assert stored.normalized == "双福街道福城路1号"
    assert stored.region_id == regions["S-Z1-G1-M1-B1"].id
    assert stored.created_at == runtime.clock.now()
    rows = _audit(session, "address:register")
    assert [(r.actor, r.object_type, r.object_id) for r in rows] == [("cli", "std_address", "A1")]
    assert verify_chain(session=session, runtime=runtime).ok


def test_a_point_outside_the_buildings_falls_in_the_deepest_region_or_none(
        session: Session, runtime: Runtime, regions: dict[str, Region]) -> None:
    in_micro = _register(session, runtime, code="M", lon=X + 0.015, lat=Y + 0.005)
    outside = _register(session, runtime, code="O", lon=X + 1.0, lat=Y + 1.0)
    assert in_micro.region_id == regions["S-Z1-G1-M1"].id
    assert outside.region_id is None


def test_a_caller_provided_locator_decides_the_region(
        session: Session, runtime: Runtime, regions: dict[str, Region]) -> None:
    building = regions["S-Z1-G1-M1-B2"].id
    address = register_address(session=session, runtime=runtime, actor="cli", code="L",
                               text=ADDRESS, lon=X, lat=Y, locator=lambda lon, lat: building)
    assert address.region_id == building


def test_a_duplicate_code_is_a_conflict_and_stores_nothing(
        session: Session, runtime: Runtime) -> None:
    _register(session, runtime)
    with pytest.raises(Conflict) as caught:
        _register(session, runtime, text="重庆市江津区双福街道福城路2号")
    assert caught.value.message_id == "addresses.code_exists"
    assert _count(session, StandardAddress) == 1
    assert len(_audit(session, "address:register")) == 1


@pytest.mark.parametrize(("lon", "lat"), [(181.0, 29.3), (-180.5, 29.3), (106.2, 91.0),
                                          (float("nan"), 29.3), (106.2, float("inf"))])
def test_coordinates_out_of_range_are_refused(session: Session, runtime: Runtime, lon: float,
                                              lat: float) -> None:
    with pytest.raises(ValidationFailed) as caught:
        _register(session, runtime, lon=lon, lat=lat)
    assert caught.value.message_id == "addresses.coordinates_invalid"
    assert _count(session, StandardAddress) == 0
    assert _count(session, AuditRow) == 0


@pytest.mark.parametrize(("code", "text", "message_id"), [
    ("", ADDRESS, "addresses.code_invalid"),
    ("   ", ADDRESS, "addresses.code_invalid"),
    ("C" * 61, ADDRESS, "addresses.code_invalid"),
    ("A1", "", "addresses.text_invalid"),
    ("A1", "、，·-", "addresses.text_invalid"),
    ("A1", "址" * 301, "addresses.text_invalid"),
])
def test_a_missing_or_too_long_code_or_text_is_refused(session: Session, runtime: Runtime,
                                                       code: str, text: str,
                                                       message_id: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        _register(session, runtime, code=code, text=text)
    assert caught.value.message_id == message_id
    assert _count(session, StandardAddress) == 0


def test_only_a_region_editor_registers_addresses(session: Session, runtime: Runtime) -> None:
    grid_worker = _user(session, runtime, Role.GRID_WORKER)
    with pytest.raises(PermissionDenied):
        register_address(session=session, runtime=runtime, actor=grid_worker, code="A1",
                         text=ADDRESS, lon=X, lat=Y)
    admin = _user(session, runtime, Role.SYSTEM_ADMIN)
    register_address(session=session, runtime=runtime, actor=admin, code="A1", text=ADDRESS,
                     lon=X, lat=Y)
    assert _audit(session, "address:register")[0].actor == admin.username


# --- resolve -----------------------------------------------------------------------------------


def test_resolving_by_code_gives_the_point_and_region(
        session: Session, runtime: Runtime, regions: dict[str, Region]) -> None:
    address = _register(session, runtime)
    found = queries.resolve(session=session, address_id=" A1 ")
    assert found == queries.ResolvedAddress(
        address_id=address.id, code="A1", text=ADDRESS, lon=X + 0.003, lat=Y + 0.003,
        region_id=regions["S-Z1-G1-M1-B1"].id, plate_token=None)


def test_resolving_by_plate_token_names_the_plate(session: Session, runtime: Runtime) -> None:
    address = _register(session, runtime)
    plate = issue_plate(session=session, runtime=runtime, actor="cli", address_code="A1")
    assert len(plate.token) >= 20
    found = queries.resolve(session=session, address_id=plate.token)
    assert found is not None
    assert (found.address_id, found.plate_token) == (address.id, plate.token)
    assert queries.get_by_plate(session=session, token=plate.token) == found
    [row] = _audit(session, "door_plate:issue")
    assert plate.token not in row.detail and row.object_id == str(plate.id)


def test_a_revoked_plate_resolves_to_nothing(session: Session, runtime: Runtime) -> None:
    _register(session, runtime)
    plate = issue_plate(session=session, runtime=runtime, actor="cli", address_code="A1")
    revoked = revoke_plate(session=session, runtime=runtime, actor="cli", token=plate.token,
                           reason="门牌被涂改")
    assert revoked.revoked_reason == "门牌被涂改"
    assert revoked.revoked_at == runtime.clock.now()
    assert queries.resolve(session=session, address_id=plate.token) is None
    assert queries.resolve(session=session, address_id="A1") is not None  # the address lives on
    [row] = _audit(session, "door_plate:revoke")
    assert json.loads(row.detail) == {"reason": "门牌被涂改"}


def test_revoking_needs_a_reason_and_happens_once(session: Session, runtime: Runtime) -> None:
    _register(session, runtime)
    plate = issue_plate(session=session, runtime=runtime, actor="cli", address_code="A1")
    with pytest.raises(ValidationFailed) as caught:
        revoke_plate(session=session, runtime=runtime, actor="cli", token=plate.token,
                     reason="  ")
    assert caught.value.message_id == "addresses.plate.reason_required"
    revoke_plate(session=session, runtime=runtime, actor="cli", token=plate.token, reason="遗失")
    with pytest.raises(Conflict):
        revoke_plate(session=session, runtime=runtime, actor="cli", token=plate.token,
                     reason="遗失")
    with pytest.raises(NotFound):
        revoke_plate(session=session, runtime=runtime, actor="cli", token="no-such-token",
                     reason="遗失")


def test_a_retired_address_resolves_to_nothing_by_any_route(session: Session,
                                                            runtime: Runtime) -> None:
    _register(session, runtime)
    plate = issue_plate(session=session, runtime=runtime, actor="cli", address_code="A1")
    retire_address(session=session, runtime=runtime, actor="cli", code="A1")
    assert queries.resolve(session=session, address_id="A1") is None
    assert queries.resolve(session=session, address_id=plate.token) is None
    assert queries.resolve(session=session, text=ADDRESS) is None
    with pytest.raises(Conflict):
        issue_plate(session=session, runtime=runtime, actor="cli", address_code="A1")
    with pytest.raises(Conflict):
        retire_address(session=session, runtime=runtime, actor="cli", code="A1")
    assert len(_audit(session, "address:retire")) == 1


@pytest.mark.parametrize("typed", [
    "重庆市江津区双福街道福城路1号",
    "重庆市江津区双福街道福城路1号1栋2单元301室",
    "江津区 双福街道·福城路1号 2单元",
    "双福街道福城路１号附近，路灯不亮",
])
def test_a_typed_address_with_a_tail_or_a_shorter_head_resolves(
        session: Session, runtime: Runtime, typed: str) -> None:
    address = _register(session, runtime, text="双福街道福城路1号")
    found = queries.resolve(session=session, text=typed)
    assert found is not None and found.address_id == address.id


def test_a_stored_address_with_the_city_prefix_matches_a_typed_one_without(
        session: Session, runtime: Runtime) -> None:
    address = _register(session, runtime, text="重庆市江津区双福街道福城路1号1栋")
    # Stored from the street on, so the city and the district may be typed or left out.
    for typed in ("江津区双福街道福城路1号1栋2单元301室", "双福街道福城路1号1栋",
                  "重庆市江津区双福街道福城路1号1栋2单元301室"):
        found = queries.resolve(session=session, text=typed)
        assert found is not None and found.address_id == address.id, typed


def test_the_longest_match_wins_and_ties_go_to_the_smallest_id(session: Session,
                                                               runtime: Runtime) -> None:
    _register(session, runtime, code="ROAD", text="双福街道福城路1号")
    building = _register(session, runtime, code="B1", text="双福街道福城路1号1栋")
    twin = _register(session, runtime, code="B1-COPY", text="双福街道 福城路1号·1栋")
    found = queries.resolve(session=session, text="重庆市江津区双福街道福城路1号1栋2单元301室")
    assert found is not None and found.address_id == building.id < twin.id


def test_unknown_text_or_nothing_resolves_to_none(session: Session, runtime: Runtime) -> None:
    _register(session, runtime)
    assert queries.resolve(session=session, text="重庆市江津区几江街道滨江路8号") is None
    assert queries.resolve(session=session, text="福城") is None
    assert queries.resolve(session=session) is None
    assert queries.resolve(session=session, address_id="", text="  ") is None


def test_an_unknown_id_falls_back_to_the_typed_text(session: Session, runtime: Runtime) -> None:
    address = _register(session, runtime)
    found = queries.resolve(session=session, address_id="nope", text=ADDRESS + "3单元")
    assert found is not None and found.address_id == address.id


def test_listing_is_limited_to_a_region_subtree(
        session: Session, runtime: Runtime, regions: dict[str, Region]) -> None:
    _register(session, runtime, code="A1")
    _register(session, runtime, code="A2", lon=X + 0.011, lat=Y + 0.011)
    _register(session, runtime, code="A3", lon=X + 1.0, lat=Y + 1.0)
    everything = queries.list_addresses(session=session)
    assert [a.code for a in everything] == ["A1", "A2", "A3"]
    b2 = regions["S-Z1-G1-M1-B2"]
    assert [a.code for a in queries.list_addresses(session=session,
                                                   region_path_prefix=b2.path)] == ["A2"]
    street = regions["S"]
    assert [a.code for a in queries.list_addresses(session=session, region_path_prefix=street.path,
                                                   limit=1, offset=1)] == ["A2"]


# --- import ------------------------------------------------------------------------------------


def test_an_import_creates_every_row_with_one_audit_row(
        session: Session, runtime: Runtime, regions: dict[str, Region]) -> None:
    rows = [("I1", "双福街道福城路1号", "106.203", "29.303"),
            ("I2", "双福街道福城路2号", X + 0.011, Y + 0.011)]
    assert import_addresses(session=session, runtime=runtime, actor="cli", rows=rows) == 2
    stored = {a.code: a for a in session.scalars(select(StandardAddress))}
    assert stored["I1"].region_id == regions["S-Z1-G1-M1-B1"].id
    assert stored["I2"].region_id == regions["S-Z1-G1-M1-B2"].id
    assert stored["I1"].normalized == "双福街道福城路1号"
    [row] = _audit(session, "address:import")
    assert json.loads(row.detail)["created"] == 2
    assert verify_chain(session=session, runtime=runtime).ok


def test_an_import_with_bad_rows_stores_nothing_and_names_the_first(
        session: Session, runtime: Runtime) -> None:
    _register(session, runtime, code="OLD")
    rows: list[tuple[Any, ...]] = [
        ("I1", "双福街道福城路1号", X, Y),
        ("I2", "双福街道福城路2号", X, 95.0),  # row 3 with the header: latitude out of range
        ("I1", "双福街道福城路3号", X, Y),  # repeats row 2
        ("OLD", "双福街道福城路4号", X, Y),  # already registered
        ("I5", "双福街道福城路5号"),  # a column short
    ]
    with pytest.raises(AddressImportFailed) as caught:
        import_addresses(session=session, runtime=runtime, actor="cli", rows=rows, first_row=2)
    error = caught.value
    assert isinstance(error, ValidationFailed)
    assert error.message_id == "addresses.import.coordinates_invalid"
    assert error.params["row"] == 3 and error.params["count"] == 4
    assert [(p.row, p.message_id) for p in error.problems] == [
        (3, "addresses.import.coordinates_invalid"),
        (4, "addresses.import.code_repeated"),
        (5, "addresses.import.code_exists"),
        (6, "addresses.import.row_shape"),
    ]
    assert error.problems[1].params == {"code": "I1", "first_row": 2}
    assert "第3行" in error.message("zh_CN") and "Row 3" in error.message("en")
    assert _count(session, StandardAddress) == 1
    assert _audit(session, "address:import") == []


def test_an_empty_import_writes_nothing(session: Session, runtime: Runtime) -> None:
    assert import_addresses(session=session, runtime=runtime, actor="cli", rows=[]) == 0
    assert _count(session, AuditRow) == 0


# --- demo seed and messages --------------------------------------------------------------------


def test_the_demo_seed_gives_each_building_an_address_and_a_plate_once(
        session: Session, runtime: Runtime, regions: dict[str, Region]) -> None:
    assert seed_demo_addresses(session=session, runtime=runtime) == 2
    stored = {a.code: a for a in session.scalars(select(StandardAddress))}
    assert set(stored) == {"S-Z1-G1-M1-B1", "S-Z1-G1-M1-B2"}
    b1 = stored["S-Z1-G1-M1-B1"]
    assert b1.text == "重庆市江津区双福街道福城片区第1网格微网格1-1·1栋"
    assert b1.region_id == regions["S-Z1-G1-M1-B1"].id
    centroid = shapely.from_geojson(regions["S-Z1-G1-M1-B2"].geometry).centroid
    assert stored["S-Z1-G1-M1-B2"].lon == pytest.approx(centroid.x)
    assert stored["S-Z1-G1-M1-B2"].lat == pytest.approx(centroid.y)
    plates = list(session.scalars(select(DoorPlate)))
    assert sorted(p.address_id for p in plates) == sorted(a.id for a in stored.values())
    assert len({p.token for p in plates}) == 2
    found = queries.resolve(session=session, address_id=plates[0].token)
    assert found is not None and found.address_id == plates[0].address_id
    found = queries.resolve(session=session, text=b1.text + "2单元301室")
    assert found is not None and found.address_id == b1.id
    assert len(_audit(session, "address:import")) == 1

    assert seed_demo_addresses(session=session, runtime=runtime) == 0
    assert _count(session, StandardAddress) == 2 and _count(session, DoorPlate) == 2
    assert len(_audit(session, "address:import")) == 1


def test_the_address_messages_exist_in_both_languages() -> None:
    folder = resources.files("grassroots.kernel").joinpath("locales")
    zh = json.loads(folder.joinpath("zh_CN.json").read_text(encoding="utf-8"))
    en = json.loads(folder.joinpath("en.json").read_text(encoding="utf-8"))
    ours = {k for k in zh if k.startswith("addresses.")}
    assert ours == {k for k in en if k.startswith("addresses.")}
    for kind in ("code_invalid", "text_invalid", "coordinates_invalid", "code_exists"):
        assert f"addresses.{kind}" in ours and f"addresses.import.{kind}" in ours
