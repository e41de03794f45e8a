"""POST requests: the spec's fields checked, the incident made by command.actions.intake, and the
Open311 extras (address_id, media_url, contact references) saved beside it.

The fields arrive form-encoded (as the spec says) or as a JSON object; `collect_fields` turns
either into one shape. Problems with the fields themselves are all reported together, as the
spec's error list; the command core's own checks (category, attributes, phone) come after.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from grassroots.command import actions
from grassroots.command.context import current_calendar, current_locator
from grassroots.command.models import Incident, IncidentCategory
from grassroots.command.open311.formats import Open311Error
from grassroots.command.open311.keys import client_ref
from grassroots.command.open311.models import Open311Client, Open311Request
from grassroots.command.states import DESCRIPTION_MAX_CHARS, Channel, SystemActor

if TYPE_CHECKING:
    from grassroots.runtime import Runtime

EMAIL_CONTEXT = "open311.email"
DEVICE_CONTEXT = "open311.device_id"
ADDRESS_STRING_MAX = 300  # incident.address_text
REFERENCE_MAX = 120  # address_id, account_id, device_id, Idempotency-Key
NAME_PART_MAX = 30  # two parts in CJK still fit the encrypted column (300 characters)
EMAIL_MAX = 254
MEDIA_URL_MAX = 1000

_ATTRIBUTE = re.compile(r"^attribute\[([^\[\]]+)\](\[\])?$")
_SCALARS = ("api_key", "jurisdiction_id", "service_code", "lat", "long", "address_string",
            "address_id", "email", "device_id", "account_id", "first_name", "last_name",
            "phone", "description", "media_url")


@dataclass
class Fields:
    """The submitted values: each scalar field's values in order, and the attribute answers."""

    values: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    attributes: dict[str, Any] = field(default_factory=dict)

    def one(self, name: str) -> str | None:
        """The first value given for `name`, stripped; None when absent or blank."""
        for value in self.values.get(name, ()):
            if value.strip():
                return value.strip()
        return None


def _as_text(value: str | int | float | bool) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _add_attribute(fields: Fields, code: str, value: Any, many: bool) -> None:
    if many or code in fields.attributes:
        previous = fields.attributes.get(code, [])
        items = previous if isinstance(previous, list) else [previous]
        fields.attributes[code] = [*items, *(value if isinstance(value, list) else [value])]
    else:
        fields.attributes[code] = value


def collect_fields(items: Iterable[tuple[str, Any]],
                   json_attributes: Mapping[str, Any] | None = None) -> Fields:
    """Fields from (name, value) pairs (a form's multi items, or a JSON object's items).

    attribute[code]=v gives one answer, attribute[code][]=v (repeated) a list; a JSON body may
    also send {"attribute": {"code": v}}. Uploaded files are not part of GeoReport v2 and are
    ignored.
    """
    fields = Fields()
    for name, value in items:
        if not isinstance(value, str | int | float | bool | list):
            continue  # an uploaded file, JSON null or an object
        match = _ATTRIBUTE.match(name)
        if match:
            _add_attribute(fields, match.group(1), value, many=bool(match.group(2)))
        elif name in _SCALARS and not isinstance(value, list):
            fields.values[name].append(_as_text(value))
    for code, value in (json_attributes or {}).items():
        _add_attribute(fields, str(code), value, many=False)
    return fields


@dataclass(frozen=True)
class RequestInput:
    """A POST's fields, each one checked for shape (not yet against the catalogue)."""

    service_code: str
    lat: float | None
    lon: float | None
    address_string: str | None
    address_id: str | None
    attributes: dict[str, Any]
    description: str
    media_url: str | None
    email: str | None
    device_id: str | None
    account_id: str | None
    reporter_name: str | None
    phone: str | None


def _coordinates(fields: Fields, errors: list[str]) -> tuple[float | None, float | None]:
    lat_text, lon_text = fields.one("lat"), fields.one("long")
    if lat_text is None and lon_text is None:
        return None, None
    try:
        lat = float(lat_text) if lat_text is not None else None
        lon = float(lon_text) if lon_text is not None else None
    except ValueError:
        lat = lon = None
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        errors.append("lat and long must both be given, as WGS-84 decimal degrees")
        return None, None
    return lat, lon


def _limited(fields: Fields, name: str, limit: int, errors: list[str]) -> str | None:
    value = fields.one(name)
    if value is not None and len(value) > limit:
        errors.append(f"{name} is longer than {limit} characters")
        return None
    return value


def _reporter_name(first: str | None, last: str | None) -> str | None:
    parts = [p for p in (first, last) if p]
    if not parts:
        return None
    if all("\u3400" <= ch <= "\u9fff" for part in parts for ch in part):
        return (last or "") + (first or "")  # a Chinese name puts the family name first
    return " ".join(parts)


def check_fields(fields: Fields) -> RequestInput:
    """The request's fields in shape, or Open311Error(400) listing every problem found."""
    errors: list[str] = []
    service_code = fields.one("service_code")
    if service_code is None:
        errors.append("service_code was not provided")
    lat, lon = _coordinates(fields, errors)
    address_string = _limited(fields, "address_string", ADDRESS_STRING_MAX, errors)
    address_id = _limited(fields, "address_id", REFERENCE_MAX, errors)
    coordinates_sent = fields.one("lat") is not None or fields.one("long") is not None
    if not coordinates_sent and address_string is None and address_id is None:
        errors.append("A location is required: lat and long, address_string or address_id")
    description = "".join(fields.values.get("description", ())[:1]).strip()
    if len(description) > DESCRIPTION_MAX_CHARS:
        errors.append(f"description is longer than {DESCRIPTION_MAX_CHARS} characters")
    media_url = _limited(fields, "media_url", MEDIA_URL_MAX, errors)
    if media_url is not None and not media_url.lower().startswith(("http://", "https://")):
        errors.append("media_url must be an http or https URL")
    email = _limited(fields, "email", EMAIL_MAX, errors)
    if email is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+", email):
        errors.append("email is not an e-mail address")
    device_id = _limited(fields, "device_id", REFERENCE_MAX, errors)
    account_id = _limited(fields, "account_id", REFERENCE_MAX, errors)
    first = _limited(fields, "first_name", NAME_PART_MAX, errors)
    last = _limited(fields, "last_name", NAME_PART_MAX, errors)
    phone = _limited(fields, "phone", 40, errors)
    if errors:
        raise Open311Error(400, *errors)
    assert service_code is not None
    return RequestInput(service_code=service_code, lat=lat, lon=lon,
                        address_string=address_string, address_id=address_id,
                        attributes=dict(fields.attributes), description=description,
                        media_url=media_url, email=email, device_id=device_id,
                        account_id=account_id, reporter_name=_reporter_name(first, last),
                        phone=phone)


@dataclass(frozen=True)
class Submitted:
    incident: Incident
    category: IncidentCategory
    created: bool


def submit_request(*, session: Session, runtime: Runtime, client: Open311Client,
                   data: RequestInput, idempotency_key: str | None = None,
                   source_ip: str | None = None) -> Submitted:
    """Make the incident through intake (located, registered, dispatched) and save the extras.

    The client's name is the actor and the client_ref, so a retry carrying the same
    Idempotency-Key returns the first incident and writes nothing new.
    """
    if idempotency_key is not None and len(idempotency_key) > REFERENCE_MAX:
        raise Open311Error(400, f"Idempotency-Key is longer than {REFERENCE_MAX} characters")
    reference = client_ref(client)
    result = actions.intake(
        session=session, runtime=runtime, actor=SystemActor(reference), channel=Channel.OPEN311,
        category_code=data.service_code, calendar=current_calendar(session),
        locator=current_locator(session), lon=data.lon, lat=data.lat,
        address_text=data.address_string, address_id=data.address_id,
        description=data.description, idempotency_key=idempotency_key, client_ref=reference,
        reporter_phone=data.phone, reporter_name=data.reporter_name,
        attributes=data.attributes, source_ip=source_ip)
    incident = result.incident
    _save_extras(session, runtime, incident.id, client, data)
    category = session.get(IncidentCategory, incident.category_id)
    assert category is not None  # a foreign key
    return Submitted(incident=incident, category=category, created=result.created)


def _save_extras(session: Session, runtime: Runtime, incident_id: int, client: Open311Client,
                 data: RequestInput) -> None:
    """The Open311 row beside the incident, once; a retried request finds it already there."""
    if session.get(Open311Request, incident_id) is not None:
        return
    crypto = runtime.crypto
    session.add(Open311Request(
        incident_id=incident_id, client_id=client.id, address_id=data.address_id,
        media_url=data.media_url, account_id=data.account_id,
        email_enc=crypto.encrypt(data.email, context=EMAIL_CONTEXT) if data.email else None,
        device_id_enc=crypto.encrypt(data.device_id, context=DEVICE_CONTEXT)
        if data.device_id else None))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()  # a concurrent retry of the same request saved it first
