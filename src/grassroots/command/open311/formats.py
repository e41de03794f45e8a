"""GeoReport v2 documents and their two forms: JSON, and XML with the spec's element names.

Every document is built as plain dicts and lists first; `render` writes it as JSON or as UTF-8
XML, where a list held by an element takes its item element name from ITEM_TAGS
(<services><service>…, <attributes><attribute>…). Errors are the spec's list of
{code, description}: <errors><error><code>…</code><description>…</description></error></errors>.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from datetime import datetime
from typing import Any

from fastapi.responses import Response

from grassroots.command.models import Incident, IncidentCategory
from grassroots.command.open311 import (
    API_CHANGESET,
    CONTACT,
    KEY_SERVICE,
    SERVICE_TYPE,
    SPECIFICATION,
)
from grassroots.command.open311.queries import RequestRow, UpdateRow
from grassroots.command.states import TERMINAL_STATES, IncidentState
from grassroots.kernel.clock import DISPLAY_TZ, to_display
from grassroots.kernel.i18n import translate
from grassroots.kernel.personal import mask_address, mask_id_number, mask_phone

JSON_MEDIA_TYPE = "application/json; charset=utf-8"
XML_MEDIA_TYPE = "text/xml; charset=utf-8"
FORMATS = {"json": JSON_MEDIA_TYPE, "xml": XML_MEDIA_TYPE}
DEFAULT_FORMAT = "xml"  # the one format the spec requires
DISCOVERY_FORMATS = ["text/xml", "application/json"]
XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'

# The element name of each item of a list, by the name of the element that holds the list.
ITEM_TAGS = {
    "services": "service",
    "service_requests": "request",
    "service_request_updates": "request_update",
    "errors": "error",
    "endpoints": "endpoint",
    "formats": "format",
    "attributes": "attribute",
    "values": "value",
}

HTTP_DESCRIPTIONS = {
    400: "Bad request",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "The request conflicts with a concurrent change; try again",
    500: "Internal error; the service has logged it",
}

# Characters XML 1.0 cannot hold at all; stripping them keeps every document well-formed.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
# What the public feed masks inside free text: mainland mobiles, landlines, resident ID numbers.
_ID_NUMBER = re.compile(r"(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])")
_MOBILE = re.compile(r"(?<!\d)(?:\+?86[\s-]?)?1[3-9]\d(?:[\s-]?\d{4}){2}(?!\d)")
_LANDLINE = re.compile(r"(?<!\d)0\d{2,3}-\d{7,8}(?!\d)")


class Open311Error(Exception):
    """A failure the spec's way: the HTTP status and one or more error descriptions."""

    def __init__(self, status: int, *descriptions: str) -> None:
        self.status = status
        self.descriptions = descriptions or (HTTP_DESCRIPTIONS.get(status, "Error"),)
        super().__init__("; ".join(self.descriptions))


def split_format(name: str) -> tuple[str, str]:
    """("services", "json") from "services.json"; an unknown format is a 404 (as a missing path)."""
    stem, dot, fmt = name.rpartition(".")
    if not dot or not stem or fmt not in FORMATS:
        raise Open311Error(404, "Unknown resource or format; use .xml or .json")
    return stem, fmt


def format_of_path(path: str) -> str:
    """The format a path asks for, for error documents; XML when it names none we know."""
    fmt = path.rsplit(".", 1)[-1] if "." in path.rsplit("/", 1)[-1] else ""
    return fmt if fmt in FORMATS else DEFAULT_FORMAT


# --- rendering ----------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return _XML_INVALID.sub("", str(value))


def _fill(element: ET.Element, value: Any) -> None:
    if isinstance(value, dict):
        for key, child in value.items():
            _fill(ET.SubElement(element, key), child)
    elif isinstance(value, list):
        tag = ITEM_TAGS[element.tag]
        for item in value:
            _fill(ET.SubElement(element, tag), item)
    else:
        element.text = _text(value)


def to_xml(root: str, document: Any) -> bytes:
    element = ET.Element(root)
    _fill(element, document)
    return XML_DECLARATION + ET.tostring(element, encoding="unicode").encode("utf-8")


def to_json(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def render(document: Any, fmt: str, root: str, status: int = 200) -> Response:
    """The document as JSON, or as XML under the root element `root`."""
    body = to_json(document) if fmt == "json" else to_xml(root, document)
    return Response(content=body, status_code=status, media_type=FORMATS[fmt])


def error_response(status: int, descriptions: tuple[str, ...] | list[str], fmt: str) -> Response:
    errors = [{"code": status, "description": description} for description in descriptions]
    return render(errors, fmt, "errors", status=status)


# --- values -------------------------------------------------------------------------------------


def w3c(value: datetime | None) -> str | None:
    """A W3C datetime with its offset, in Beijing time (2026-03-10T09:30:00+08:00)."""
    return None if value is None else to_display(value).isoformat(timespec="seconds")


def parse_w3c(value: str, name: str) -> datetime:
    """A W3C/ISO 8601 datetime; one without an offset is read as Beijing time."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise Open311Error(400, f"{name} must be a W3C datetime such as "
                                "2026-03-10T09:30:00+08:00") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=DISPLAY_TZ)


def public_status(state: IncidentState) -> str:
    """Our detailed states fold into the spec's two: closed (closed, voided) or open."""
    return "closed" if state in TERMINAL_STATES else "open"


def scrub(text: str) -> str:
    """Free text with phone and ID numbers masked, for the public feed."""
    text = _ID_NUMBER.sub(lambda m: mask_id_number(m.group()), text)
    text = _MOBILE.sub(lambda m: mask_phone(m.group()), text)
    return _LANDLINE.sub(lambda m: mask_phone(m.group()), text)


def limit_text(category: IncidentCategory, language: str) -> str:
    unit = category.limit_unit.value
    message = f"open311.limit.{unit}.one" if category.limit_value == 1 else f"open311.limit.{unit}"
    return translate(message, language, n=category.limit_value)


def service_name(category: IncidentCategory, language: str) -> str:
    return category.name_en if language == "en" else category.name_zh


def group_name(category: IncidentCategory, language: str) -> str:
    return category.major_name_en if language == "en" else category.major_name_zh


def service_notice(category: IncidentCategory, language: str) -> str:
    return translate("open311.service_notice", language, limit=limit_text(category, language))


def state_label(state: IncidentState | str, language: str) -> str:
    return translate(f"open311.state.{state}", language)


def action_label(action: str, language: str) -> str:
    message_id = f"open311.action.{action}"
    text = translate(message_id, language)
    return action if text == message_id else text


# --- documents ----------------------------------------------------------------------------------


def discovery_document(*, url: str, changeset: datetime | None, production: bool) -> dict[str, Any]:
    stamp = w3c(max(API_CHANGESET, changeset) if changeset else API_CHANGESET)
    return {
        "changeset": stamp,
        "contact": CONTACT,
        "key_service": KEY_SERVICE,
        "endpoints": [{
            "specification": SPECIFICATION,
            "url": url,
            "changeset": stamp,
            "type": "production" if production else "test",
            "formats": list(DISCOVERY_FORMATS),
        }],
    }


def _attributes(category: IncidentCategory) -> list[dict[str, Any]]:
    return list(json.loads(category.attributes or "[]"))


def service_document(category: IncidentCategory, language: str) -> dict[str, Any]:
    names = [category.name_zh, category.name_en, category.major_name_zh, category.major_name_en]
    return {
        "service_code": category.code,
        "service_name": service_name(category, language),
        "description": translate("open311.service_description", language,
                                 group=group_name(category, language),
                                 name=service_name(category, language),
                                 limit=limit_text(category, language)),
        "metadata": bool(_attributes(category)),
        "type": SERVICE_TYPE,
        "keywords": ", ".join(dict.fromkeys(names)),
        "group": group_name(category, language),
    }


def _datatype_description(datatype: str, language: str) -> str | None:
    message_id = f"open311.datatype.{datatype}"
    text = translate(message_id, language)
    return None if text == message_id else text


def definition_document(category: IncidentCategory, language: str) -> dict[str, Any]:
    attributes = []
    for order, spec in enumerate(_attributes(category), start=1):
        description = spec["description"]
        if language == "en" and spec.get("description_en"):
            description = spec["description_en"]
        attributes.append({
            "variable": True,
            "code": spec["code"],
            "datatype": spec["datatype"],
            "required": bool(spec.get("required", False)),
            "datatype_description": _datatype_description(spec["datatype"], language),
            "order": order,
            "description": description,
            "values": [{"key": v["key"], "name": v["name"]} for v in spec.get("values", ())],
        })
    return {"service_code": category.code, "attributes": attributes}


def status_notes(incident: Incident, duplicate_of: str | None, language: str) -> str:
    notes = state_label(incident.state, language)
    if duplicate_of:
        notes += translate("open311.notes.duplicate_of", language, number=duplicate_of)
    return notes


def request_document(row: RequestRow, language: str) -> dict[str, Any]:
    """A request as GET requests shows it; never a name, a phone or an e-mail address.

    The public gets the address down to the road and free text with phone and ID numbers
    masked; the submitting client gets back what it sent.
    """
    incident, category, extra = row.incident, row.category, row.extra
    address = incident.address_text
    description = incident.description or ""
    if not row.own:
        address = mask_address(address) if address else address
        description = scrub(description)
    return {
        "service_request_id": incident.number,
        "status": public_status(incident.state),
        "status_notes": status_notes(incident, row.duplicate_of, language),
        "service_name": service_name(category, language),
        "service_code": category.code,
        "description": description,
        "agency_responsible": row.zone_name,
        "service_notice": service_notice(category, language),
        "requested_datetime": w3c(incident.received_at),
        "updated_datetime": w3c(row.updated_at),
        "expected_datetime": w3c(row.handling_due),
        "address": address,
        "address_id": extra.address_id if extra is not None and row.own else None,
        "zipcode": None,
        "lat": incident.lat,
        "long": incident.lon,
        "media_url": extra.media_url if extra is not None else None,
    }


def created_document(incident: Incident, category: IncidentCategory, account_id: str | None,
                     language: str) -> list[dict[str, Any]]:
    """POST requests' answer; no token, because the request exists as soon as we answer."""
    return [{"service_request_id": incident.number,
             "service_notice": service_notice(category, language),
             "account_id": account_id}]


def token_document(number: str, token: str) -> list[dict[str, Any]]:
    return [{"service_request_id": number, "token": token}]


def update_document(row: UpdateRow, language: str) -> dict[str, Any]:
    transition = row.transition
    description = translate("open311.update", language,
                            action=action_label(transition.action, language),
                            state=state_label(transition.to_state, language))
    if row.own and transition.reason:
        description += translate("open311.update.reason", language, reason=transition.reason)
    return {
        "update_id": str(transition.id),
        "service_request_id": row.incident.number,
        "status": public_status(transition.to_state),
        "updated_datetime": w3c(transition.at),
        "description": description,
        "media_url": None,
    }
