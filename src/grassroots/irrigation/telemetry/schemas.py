"""API shapes for telemetry, and the check of an uploaded batch before anything is written.

An upload is checked item by item in full, and one bad item rejects the whole batch with
the list of every problem found (capped at ``MAX_PROBLEMS_LISTED``), so a client can fix
its file in one go. Each problem carries a message id, translated by the route.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from grassroots.irrigation.telemetry.state import (
    QUANTITIES,
    DeviceHealth,
    Source,
    finite_or_none,
)
from grassroots.irrigation.telemetry.store import ReadingIn
from grassroots.kernel.errors import ValidationFailed

MAX_UPLOAD = 50_000
MAX_PROBLEMS_LISTED = 200
# A device or logger clock may run a little fast; beyond this an upload is refused.
FUTURE_TOLERANCE = timedelta(hours=1)
UPLOAD_FIELDS = frozenset({"structure", "quantity", "observed_at", "value", "quality"})
_EPOCH_MS_MIN = 946_684_800_000  # 2000-01-01
_EPOCH_MS_MAX = 4_102_444_800_000  # 2100-01-01
_HTTP = Source.HTTP.value


class ReadingUpload(BaseModel):
    """One uploaded reading (documentation of the body; the route checks items itself)."""

    structure: str
    quantity: str
    observed_at: str | int
    value: float | None
    quality: int | None = None


class UploadResult(BaseModel):
    batch: str
    received: int
    inserted: int
    duplicates: int


class ReadingOut(BaseModel):
    quantity: str
    observed_at: datetime
    value: float | None
    quality: int
    source: str


class ReadingsOut(BaseModel):
    structure: str
    count: int
    readings: list[ReadingOut]


class DeviceOut(BaseModel):
    structure: str
    name: str
    kind: str
    state: DeviceHealth
    last_seen_at: datetime | None
    last_reading_at: datetime | None
    last_failure_at: datetime | None
    last_error: str | None
    announced: str | None
    voltage_v: float | None
    last_source: str | None


class DevicesOut(BaseModel):
    at: datetime
    devices: list[DeviceOut]


@dataclass(frozen=True, slots=True)
class Problem:
    """What is wrong with one item (index None: with the batch as a whole)."""

    index: int | None
    field: str | None
    code: str
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def message_id(self) -> str:
        return f"telemetry.upload.{self.code}"


class UploadRejected(ValidationFailed):
    """The batch was refused as a whole; ``problems`` says why, item by item."""

    code = "readings_rejected"
    message_id = "telemetry.upload.rejected"

    def __init__(self, problems: Sequence[Problem], total: int) -> None:
        super().__init__(self.message_id, count=total)
        self.problems = list(problems)
        self.total = total


def parse_time(value: object) -> datetime:
    """ISO 8601 with an offset, or integer epoch milliseconds; ValueError names the reason."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("bad_time") from None
        if moment.utcoffset() is None:
            raise ValueError("naive_time")
        return moment.astimezone(UTC)
    if isinstance(value, int) and not isinstance(value, bool):
        if not _EPOCH_MS_MIN <= value < _EPOCH_MS_MAX:
            raise ValueError("bad_time")
        return datetime.fromtimestamp(value / 1000, UTC)
    raise ValueError("bad_time")


@dataclass(slots=True)
class _Check:
    problems: list[Problem] = field(default_factory=list)
    total: int = 0

    def add(self, problem: Problem) -> None:
        self.total += 1
        if len(self.problems) < MAX_PROBLEMS_LISTED:
            self.problems.append(problem)


def check_upload(
    payload: object,
    *,
    resolve: Callable[[set[str]], Mapping[str, int]],
    now: datetime,
) -> list[ReadingIn]:
    """Readings from an upload body (a list, or {"readings": [...]}) or UploadRejected.

    ``resolve`` maps structure codes to ids, asked once for the whole batch.
    """
    items = payload.get("readings") if isinstance(payload, dict) else payload
    if not isinstance(items, list):
        raise UploadRejected([Problem(None, None, "not_a_list")], 1)
    if not items:
        raise UploadRejected([Problem(None, None, "empty")], 1)
    if len(items) > MAX_UPLOAD:
        raise UploadRejected([Problem(None, None, "too_many",
                                      {"count": len(items), "limit": MAX_UPLOAD})], 1)
    codes = {item["structure"] for item in items
             if isinstance(item, dict) and isinstance(item.get("structure"), str)}
    ids = resolve(codes)
    check = _Check()
    readings = [_reading(index, item, ids, now, check) for index, item in enumerate(items)]
    if check.total:
        raise UploadRejected(check.problems, check.total)
    return [reading for reading in readings if reading is not None]


def _reading(index: int, item: object, ids: Mapping[str, int], now: datetime,
             check: _Check) -> ReadingIn | None:
    if not isinstance(item, dict):
        check.add(Problem(index, None, "not_an_object"))
        return None
    before = check.total
    for name in sorted(set(item) - UPLOAD_FIELDS):
        check.add(Problem(index, str(name), "unknown_field", {"field": name}))
    code = item.get("structure")
    structure_id = ids.get(code) if isinstance(code, str) else None
    if structure_id is None:
        check.add(Problem(index, "structure", "unknown_structure", {"code": str(code)[:40]}))
    quantity = item.get("quantity")
    spec = QUANTITIES.get(quantity) if isinstance(quantity, str) else None
    if spec is None:
        check.add(Problem(index, "quantity", "unknown_quantity",
                          {"quantity": str(quantity)[:40]}))
    observed_at = None
    if "observed_at" not in item:
        check.add(Problem(index, "observed_at", "missing"))
    else:
        try:
            observed_at = parse_time(item["observed_at"])
        except ValueError as error:
            check.add(Problem(index, "observed_at", str(error)))
        else:
            if observed_at > now + FUTURE_TOLERANCE:
                check.add(Problem(index, "observed_at", "future_time"))
    value = None
    if "value" not in item:
        check.add(Problem(index, "value", "missing"))
    else:
        try:
            value = finite_or_none(item["value"])
        except ValueError:
            check.add(Problem(index, "value", "bad_value"))
    extra = item.get("quality", 0)
    if isinstance(extra, bool) or not isinstance(extra, int) or not 0 <= extra < 0x8000:
        check.add(Problem(index, "quality", "bad_quality"))
        extra = 0
    if check.total > before or spec is None or structure_id is None or observed_at is None:
        return None
    # The sender's own flags (e.g. Quality.MANUAL, ESTIMATED) are kept beside the range check.
    return ReadingIn(structure_id, spec.name, observed_at, value,
                     int(spec.quality_of(value)) | extra, _HTTP)
