"""Every write to the address register: one transaction and one audit row per action.

`actor` is the signed-in User or a string naming a system actor ("cli", "seed"); a User needs
regions.edit, like every other change to the base geography. An action called inside a
caller's explicit `session.begin()` joins that transaction.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from grassroots.kernel.addresses.models import (
    CODE_MAX,
    REVOKE_REASON_MAX,
    TEXT_MAX,
    DoorPlate,
    StandardAddress,
)
from grassroots.kernel.addresses.normalize import normalize, stored_key
from grassroots.kernel.audit import record
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Permission, has_permission
from grassroots.kernel.errors import (
    Conflict,
    NotFound,
    PermissionDenied,
    ValidationFailed,
)
from grassroots.kernel.regions.queries import get_locate_index
from grassroots.kernel.units import unit_of_work as _unit_of_work

if TYPE_CHECKING:
    from grassroots.runtime import Runtime

Actor = User | str
# (lon, lat) → the id of the deepest region holding the point, or None outside every region.
Locator = Callable[[float, float], int | None]

PLATE_TOKEN_BYTES = 16  # token_urlsafe(16): 22 characters, 128 random bits
CODE_CHUNK = 500  # codes per IN (...) when checking for duplicates: well inside SQLite's limit
IMPORT_COLUMNS = 4  # code, text, lon, lat

AUDIT_REGISTER = "address:register"
AUDIT_IMPORT = "address:import"
AUDIT_RETIRE = "address:retire"
AUDIT_PLATE_ISSUE = "door_plate:issue"
AUDIT_PLATE_REVOKE = "door_plate:revoke"




def actor_name(actor: Actor) -> str:
    return actor if isinstance(actor, str) else actor.username


def _require_edit(actor: Actor) -> None:
    if isinstance(actor, str):
        return
    if not actor.is_active or not has_permission(actor.role, Permission.REGIONS_EDIT):
        raise PermissionDenied()


# --- checks shared by the single register and the bulk import ---------------------------------


@dataclass(frozen=True)
class AddressSpec:
    """One address as checked: stripped code and text, coordinates as floats."""

    code: str
    text: str
    lon: float
    lat: float


@dataclass(frozen=True)
class RowProblem:
    """What is wrong with one import row: its number, a message id and the message's params."""

    row: int
    message_id: str
    params: dict[str, Any] = field(default_factory=dict)


class AddressImportFailed(ValidationFailed):
    """An import refused as a whole; the message names the first bad row, `problems` all."""

    def __init__(self, problems: Sequence[RowProblem]) -> None:
        first = problems[0]
        super().__init__(first.message_id, row=first.row, count=len(problems), **first.params)
        self.problems = list(problems)


def _as_float(value: Any) -> float:
    """A coordinate from a typed float or a CSV cell; NaN for anything that is not a number."""
    if isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _check(code: Any, text: Any, lon: Any, lat: Any
           ) -> tuple[AddressSpec | None, str, dict[str, Any]]:
    """(spec, "", {}) when the address is valid, else (None, problem, params).

    The problem is a suffix of both message ids: "addresses.<problem>" for one address and
    "addresses.import.<problem>" for a row of an import.
    """
    code = code.strip() if isinstance(code, str) else ""
    text = text.strip() if isinstance(text, str) else ""
    if not 0 < len(code) <= CODE_MAX:
        return None, "code_invalid", {"maximum": CODE_MAX}
    # An address of nothing but punctuation would normalise to "" and match nothing.
    if not 0 < len(text) <= TEXT_MAX or not normalize(text):
        return None, "text_invalid", {"maximum": TEXT_MAX}
    x, y = _as_float(lon), _as_float(lat)
    if not (math.isfinite(x) and math.isfinite(y) and -180 <= x <= 180 and -90 <= y <= 90):
        return None, "coordinates_invalid", {}
    return AddressSpec(code, text, x, y), "", {}


def _default_locator(session: Session) -> Locator:
    index = get_locate_index(session)

    def locate(lon: float, lat: float) -> int | None:
        region_id = index.locate_id(lon, lat)
        return region_id if region_id >= 0 else None

    return locate


def existing_codes(session: Session, codes: Iterable[str]) -> set[str]:
    """Which of `codes` are already registered (retired ones included: a code is never reused)."""
    wanted = list(dict.fromkeys(codes))
    found: set[str] = set()
    for start in range(0, len(wanted), CODE_CHUNK):
        chunk = wanted[start:start + CODE_CHUNK]
        found.update(session.scalars(
            select(StandardAddress.code).where(StandardAddress.code.in_(chunk))))
    return found


def address_values(spec: AddressSpec, region_id: int | None, runtime: Runtime) -> dict[str, Any]:
    """The column values of a new address row, for the ORM or a bulk insert."""
    return {"code": spec.code, "text": spec.text, "normalized": stored_key(spec.text),
            "lon": spec.lon, "lat": spec.lat, "region_id": region_id,
            "created_at": runtime.clock.now(), "retired_at": None}


def new_plate_token() -> str:
    """An opaque random plate id: nothing in it can be traced to the address or its people."""
    return secrets.token_urlsafe(PLATE_TOKEN_BYTES)


def _address_by_code(session: Session, code: str) -> StandardAddress:
    address = session.scalar(select(StandardAddress).where(StandardAddress.code == code.strip()))
    if address is None:
        raise NotFound("addresses.not_found", code=code.strip()[:CODE_MAX])
    return address


def _plate_by_token(session: Session, token: str) -> DoorPlate:
    plate = session.scalar(select(DoorPlate).where(DoorPlate.token == token.strip()))
    if plate is None:
        raise NotFound("addresses.plate.not_found")
    return plate


# --- actions -----------------------------------------------------------------------------------


def register_address(
    *,
    session: Session,
    runtime: Runtime,
    actor: Actor,
    code: str,
    text: str,
    lon: float,
    lat: float,
    locator: Locator | None = None,
) -> StandardAddress:
    """Register one standard address; its region is the deepest one holding the point."""
    _require_edit(actor)
    spec, problem, params = _check(code, text, lon, lat)
    if spec is None:
        raise ValidationFailed(f"addresses.{problem}", **params)
    with _unit_of_work(session):
        if existing_codes(session, [spec.code]):
            raise Conflict("addresses.code_exists", code=spec.code)
        locate = locator or _default_locator(session)
        address = StandardAddress(**address_values(spec, locate(spec.lon, spec.lat), runtime))
        session.add(address)
        try:
            session.flush()
        except IntegrityError:  # registered by someone else since the check above
            raise Conflict("addresses.code_exists", code=spec.code) from None
        record(session, runtime=runtime, actor=actor_name(actor), action=AUDIT_REGISTER,
               object_type="std_address", object_id=spec.code,
               detail={"text": spec.text, "lon": spec.lon, "lat": spec.lat,
                       "region_id": address.region_id})
    return address


@dataclass(frozen=True)
class NewAddress:
    """An address whose region the caller already knows (e.g. a building's own outline)."""

    code: str
    text: str
    lon: float
    lat: float
    region_id: int | None


def check_rows(session: Session, rows: Iterable[Sequence[Any]], *,
               first_row: int = 1) -> tuple[list[AddressSpec], list[RowProblem]]:
    """Every (code, text, lon, lat) row checked, against each other and the register.

    Returns the good rows' specs and the problems in row order; nothing is written.
    """
    specs: list[tuple[int, AddressSpec]] = []
    problems: list[RowProblem] = []
    seen: dict[str, int] = {}
    for number, row in enumerate(rows, start=first_row):
        if isinstance(row, str | bytes) or len(row) != IMPORT_COLUMNS:
            problems.append(RowProblem(number, "addresses.import.row_shape"))
            continue
        spec, problem, params = _check(*row)
        if spec is None:
            problems.append(RowProblem(number, f"addresses.import.{problem}", params))
        elif spec.code in seen:
            problems.append(RowProblem(number, "addresses.import.code_repeated",
                                       {"code": spec.code, "first_row": seen[spec.code]}))
        else:
            seen[spec.code] = number
            specs.append((number, spec))
    taken = existing_codes(session, seen)
    problems += [RowProblem(number, "addresses.import.code_exists", {"code": spec.code})
                 for number, spec in specs if spec.code in taken]
    problems.sort(key=lambda p: p.row)
    return [spec for _, spec in specs], problems


def _insert_batch(session: Session, runtime: Runtime,
                  located: Sequence[tuple[AddressSpec, int | None]], *, issue_plates: bool,
                  actor: Actor, source: str) -> None:
    """One bulk insert (two with plates) and one audit row for the whole batch."""
    values = [address_values(spec, region_id, runtime) for spec, region_id in located]
    try:
        ids = session.execute(insert(StandardAddress).returning(StandardAddress.id),
                              values).scalars().all()
    except IntegrityError:  # a concurrent writer took one of the codes since the check
        raise Conflict("addresses.code_exists", code=located[0][0].code) from None
    if issue_plates:
        now = runtime.clock.now()
        # Every new address gets one plate, so which id the database returned first is moot.
        session.execute(insert(DoorPlate), [
            {"token": new_plate_token(), "address_id": address_id, "issued_at": now,
             "revoked_at": None, "revoked_reason": None} for address_id in ids])
    record(session, runtime=runtime, actor=actor_name(actor), action=AUDIT_IMPORT,
           object_type="std_address",
           object_id=f"{located[0][0].code}..{located[-1][0].code}"[:200],
           detail={"created": len(located), "plates": len(ids) if issue_plates else 0,
                   "source": source})


def import_addresses(
    *,
    session: Session,
    runtime: Runtime,
    actor: Actor,
    rows: Iterable[Sequence[Any]],
    locator: Locator | None = None,
    first_row: int = 1,
    issue_plates: bool = False,
) -> int:
    """Register many addresses from (code, text, lon, lat) rows, all or nothing.

    Every row is checked first; if any is bad nothing is written and AddressImportFailed names
    the first bad row (numbered from `first_row`: 2 for a CSV file with a header line) and lists
    all of them. Each point is located like register_address does. Returns how many were made.
    """
    _require_edit(actor)
    with _unit_of_work(session):
        specs, problems = check_rows(session, rows, first_row=first_row)
        if problems:
            raise AddressImportFailed(problems)
        if not specs:
            return 0
        locate = locator or _default_locator(session)
        _insert_batch(session, runtime, [(spec, locate(spec.lon, spec.lat)) for spec in specs],
                      issue_plates=issue_plates, actor=actor, source="import")
    return len(specs)


def register_located_addresses(
    *,
    session: Session,
    runtime: Runtime,
    actor: Actor,
    items: Sequence[NewAddress],
    issue_plates: bool = False,
    source: str = "import",
) -> int:
    """Like import_addresses for addresses whose regions are known already: no point lookup.

    All or nothing with the same checks (items numbered from 1); returns how many were made.
    """
    _require_edit(actor)
    with _unit_of_work(session):
        rows = [(item.code, item.text, item.lon, item.lat) for item in items]
        specs, problems = check_rows(session, rows)
        if problems:
            raise AddressImportFailed(problems)
        if not specs:
            return 0
        # check_rows keeps the good rows in order, and without problems that is every item.
        located = [(spec, item.region_id) for spec, item in zip(specs, items, strict=True)]
        _insert_batch(session, runtime, located, issue_plates=issue_plates, actor=actor,
                      source=source[:60])
    return len(specs)


def retire_address(*, session: Session, runtime: Runtime, actor: Actor,
                   code: str) -> StandardAddress:
    """Retire an address (demolished, renumbered): it stays on record but no longer resolves."""
    _require_edit(actor)
    with _unit_of_work(session):
        address = _address_by_code(session, code)
        if address.retired_at is not None:
            raise Conflict("addresses.retired", code=address.code)
        address.retired_at = runtime.clock.now()
        record(session, runtime=runtime, actor=actor_name(actor), action=AUDIT_RETIRE,
               object_type="std_address", object_id=address.code)
    return address


def issue_plate(*, session: Session, runtime: Runtime, actor: Actor,
                address_code: str) -> DoorPlate:
    """A new door plate for a live address, with a fresh random token for its QR code.

    An address may carry several active plates (one per entrance); replacing a lost plate is
    revoke_plate on the old one and issue_plate for the new.
    """
    _require_edit(actor)
    with _unit_of_work(session):
        address = _address_by_code(session, address_code)
        if address.retired_at is not None:
            raise Conflict("addresses.retired", code=address.code)
        plate = DoorPlate(token=new_plate_token(), address_id=address.id,
                          issued_at=runtime.clock.now())
        session.add(plate)
        session.flush()
        # The token is left out of the trail: it is the plate's bearer link, the id suffices.
        record(session, runtime=runtime, actor=actor_name(actor), action=AUDIT_PLATE_ISSUE,
               object_type="door_plate", object_id=plate.id,
               detail={"address": address.code})
    return plate


def revoke_plate(*, session: Session, runtime: Runtime, actor: Actor, token: str,
                 reason: str) -> DoorPlate:
    """Revoke a plate (lost, defaced, copied): scanning it no longer resolves to the address."""
    _require_edit(actor)
    reason = reason.strip()
    if not 0 < len(reason) <= REVOKE_REASON_MAX:
        raise ValidationFailed("addresses.plate.reason_required", maximum=REVOKE_REASON_MAX)
    with _unit_of_work(session):
        plate = _plate_by_token(session, token)
        if plate.revoked_at is not None:
            raise Conflict("addresses.plate.revoked")
        plate.revoked_at = runtime.clock.now()
        plate.revoked_reason = reason
        record(session, runtime=runtime, actor=actor_name(actor), action=AUDIT_PLATE_REVOKE,
               object_type="door_plate", object_id=plate.id, detail={"reason": reason})
    return plate
