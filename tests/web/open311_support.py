"""A GeoReport client for the Open311 tests: the app with the router, a small area, keys."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session
from tests.integration.command_support import ADMIN, Area, load_categories, make_area

# Registers the Open311 tables before the session-wide engine's create_all.
import grassroots.command.open311.models  # noqa: F401
from grassroots.command.open311 import PREFIX
from grassroots.command.open311.api import install_open311_error_handling, router
from grassroots.command.open311.keys import issue_open311_key
from grassroots.runtime import Runtime


@dataclass
class Open311:
    app: FastAPI
    client: TestClient
    session: Session
    runtime: Runtime
    area: Area

    def key(self, name: str = "fixmystreet") -> str:
        _client, key = issue_open311_key(session=self.session, runtime=self.runtime,
                                         actor=ADMIN, client_name=name)
        return key

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(PREFIX + path, **kwargs)

    def post(self, fmt: str = "json", headers: dict[str, str] | None = None,
             **fields: Any) -> httpx.Response:
        """POST requests form-encoded, as the spec says."""
        return self.client.post(f"{PREFIX}/requests.{fmt}", data=fields, headers=headers)


@pytest.fixture(name="o311")
def o311_fixture(app: FastAPI, session: Session, runtime: Runtime) -> Iterator[Open311]:
    if not any(getattr(route, "path", None) == PREFIX + "/services.{fmt}"
               for route in app.routes):
        app.include_router(router)
    install_open311_error_handling(app)  # before the client builds the middleware stack
    load_categories(session, runtime)
    area = make_area(session)
    with TestClient(app) as client:
        yield Open311(app, client, session, runtime, area)


def xml_of(response: httpx.Response) -> ET.Element:
    assert response.headers["content-type"] == "text/xml; charset=utf-8"
    assert response.content.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    return ET.fromstring(response.content)


def json_of(response: httpx.Response) -> Any:
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    return response.json()


def children(element: ET.Element) -> list[str]:
    return [child.tag for child in element]


def assert_spec_error(response: httpx.Response, status: int, fmt: str = "json") -> list[str]:
    """The response is the spec's error list with this status; returns the descriptions."""
    assert response.status_code == status, response.text
    if fmt == "json":
        errors = json_of(response)
        assert isinstance(errors, list) and errors
        assert all(set(error) == {"code", "description"} for error in errors)
        assert all(error["code"] == status for error in errors)
        return [error["description"] for error in errors]
    root = xml_of(response)
    assert root.tag == "errors"
    assert children(root) and set(children(root)) == {"error"}
    for error in root:
        assert children(error) == ["code", "description"]
        assert error.findtext("code") == str(status)
    return [error.findtext("description") or "" for error in root]
