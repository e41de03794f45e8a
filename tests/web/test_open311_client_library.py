"""An existing Open311 client library (PyPI's `georeport`) reads our endpoints unchanged.

The library calls requests.get; here that call goes to the test client instead of the network.
Skipped where the library is not installed (it is not one of the project's dependencies).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from tests.integration.command_support import B_LAT, B_LON
from tests.web.open311_support import Open311, o311_fixture  # noqa: F401

from grassroots.command.open311 import JURISDICTION_ID

georeport = pytest.importorskip("georeport")
georeport_module = pytest.importorskip("georeport.georeport")


@pytest.fixture
def library(o311: Open311, monkeypatch: pytest.MonkeyPatch) -> Any:
    def get(url: str, params: dict[str, str] | None = None) -> Any:
        return o311.client.get(url, params=params)

    monkeypatch.setattr(georeport_module, "requests", SimpleNamespace(get=get))
    return lambda fmt: georeport.GeoReport("http://testserver/open311/v2/",
                                           jurisdiction=JURISDICTION_ID, output_format=fmt)


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_the_library_reads_services_and_a_definition(o311: Open311, library: Any,
                                                     fmt: str) -> None:
    client = library(fmt)
    services = client.get_service_list()
    assert len(services) == 50
    assert {s["service_code"] for s in services} >= {"city_env.exposed_garbage",
                                                     "emergency.fire"}
    definition = client.get_service_definition("emergency.fire")
    attributes = definition["attributes"]
    first = attributes[0] if fmt == "json" else attributes["attribute"]
    assert first["code"] == "people_trapped"


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_the_library_reads_requests_we_created(o311: Open311, library: Any, fmt: str) -> None:
    created = o311.post(api_key=o311.key(), service_code="city_env.exposed_garbage",
                        lat=B_LAT, long=B_LON, description="垃圾")
    number = created.json()[0]["service_request_id"]
    client = library(fmt)
    listed = client.get_service_requests(status="open")
    one = listed[0] if isinstance(listed, list) else listed  # xmltodict: one item, no list
    assert one["service_request_id"] == number
    single = client.get_service_request(number)
    assert single["service_request_id"] == number
    assert single["status"] == "open"
