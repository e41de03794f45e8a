"""GeoReport v2 discovery, the service list and service definitions, in JSON and in XML."""

from __future__ import annotations

import pytest
from tests.web.open311_support import (
    Open311,
    assert_spec_error,
    children,
    json_of,
    o311_fixture,  # noqa: F401
    xml_of,
)

from grassroots.command.open311 import JURISDICTION_ID, SPECIFICATION
from grassroots.command.open311.formats import ITEM_TAGS

SERVICE_FIELDS = ["service_code", "service_name", "description", "metadata", "type", "keywords",
                  "group"]
ATTRIBUTE_FIELDS = ["variable", "code", "datatype", "required", "datatype_description", "order",
                    "description", "values"]


def test_discovery_names_the_v2_endpoint_and_both_formats_in_json(o311: Open311) -> None:
    document = json_of(o311.get("/discovery.json"))
    assert set(document) == {"changeset", "contact", "key_service", "endpoints"}
    [endpoint] = document["endpoints"]
    assert endpoint["specification"] == SPECIFICATION
    assert endpoint["url"] == "http://testserver/open311/v2/"
    assert endpoint["formats"] == ["text/xml", "application/json"]
    assert endpoint["type"] == "test"
    assert endpoint["changeset"].endswith("+08:00")


def test_discovery_in_xml_uses_the_spec_element_names(o311: Open311) -> None:
    root = xml_of(o311.get("/discovery.xml"))
    assert root.tag == "discovery"
    assert children(root) == ["changeset", "contact", "key_service", "endpoints"]
    endpoint = root.find("endpoints/endpoint")
    assert endpoint is not None
    assert children(endpoint) == ["specification", "url", "changeset", "type", "formats"]
    assert [f.text for f in endpoint.findall("formats/format")] == ["text/xml",
                                                                    "application/json"]


def test_discovery_also_answers_at_the_open311_root(o311: Open311) -> None:
    response = o311.client.get("/open311/discovery.json")
    assert response.status_code == 200
    assert json_of(response)["endpoints"][0]["specification"] == SPECIFICATION


def test_services_list_every_active_category_with_the_spec_fields(o311: Open311) -> None:
    services = json_of(o311.get("/services.json"))
    assert len(services) == 50
    assert all(list(service) == SERVICE_FIELDS for service in services)
    garbage = next(s for s in services if s["service_code"] == "city_env.exposed_garbage")
    assert garbage["service_name"] == "暴露垃圾"
    assert garbage["group"] == "市容环境"
    assert garbage["type"] == "realtime"
    assert garbage["metadata"] is False
    assert "8 个工作小时" in garbage["description"]
    assert "Exposed garbage" in garbage["keywords"]
    fire = next(s for s in services if s["service_code"] == "emergency.fire")
    assert fire["metadata"] is True


def test_services_speak_english_when_asked(o311: Open311) -> None:
    services = json_of(o311.get("/services.json", headers={"Accept-Language": "en"}))
    garbage = next(s for s in services if s["service_code"] == "city_env.exposed_garbage")
    assert garbage["service_name"] == "Exposed garbage"
    assert garbage["group"] == "City appearance and environment"
    assert garbage["description"].endswith("handled within 8 working hours")


def test_services_in_xml_are_service_elements_with_the_spec_children(o311: Open311) -> None:
    root = xml_of(o311.get("/services.xml"))
    assert root.tag == "services"
    assert set(children(root)) == {"service"} and len(root) == 50
    first = root[0]
    assert children(first) == SERVICE_FIELDS
    assert first.findtext("metadata") in {"true", "false"}
    fire = next(s for s in root if s.findtext("service_code") == "emergency.fire")
    assert fire.findtext("metadata") == "true"


def test_our_own_jurisdiction_id_is_accepted_and_ignored(o311: Open311) -> None:
    response = o311.get("/services.json", params={"jurisdiction_id": JURISDICTION_ID})
    assert response.status_code == 200
    assert len(response.json()) == 50


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_an_unknown_jurisdiction_is_a_404_error_list(o311: Open311, fmt: str) -> None:
    response = o311.get(f"/services.{fmt}", params={"jurisdiction_id": "sf.ca.us"})
    [description] = assert_spec_error(response, 404, fmt)
    assert "jurisdiction_id" in description


def test_a_service_definition_lists_its_attributes_in_order(o311: Open311) -> None:
    definition = json_of(o311.get("/services/security.fight.json"))
    assert definition["service_code"] == "security.fight"
    first, second = definition["attributes"]
    assert list(first) == ATTRIBUTE_FIELDS
    assert first["code"] == "injured" and first["order"] == 1 and second["order"] == 2
    assert first["variable"] is True and first["required"] is True
    assert first["datatype"] == "singlevaluelist"
    assert first["values"] == [{"key": "yes", "name": "是"}, {"key": "no", "name": "否"}]
    assert first["description"] == "是否有人受伤"
    assert second["datatype"] == "number" and second["required"] is False
    assert second["datatype_description"] == "数字"


def test_a_service_definition_in_english_uses_the_english_questions(o311: Open311) -> None:
    definition = json_of(o311.get("/services/security.fight.json",
                                  headers={"Accept-Language": "en"}))
    assert definition["attributes"][0]["description"] == "Is anyone injured"


def test_a_service_definition_in_xml_nests_values(o311: Open311) -> None:
    root = xml_of(o311.get("/services/dispute.neighbour_noise.xml"))
    assert root.tag == "service_definition"
    assert children(root) == ["service_code", "attributes"]
    [attribute] = root.findall("attributes/attribute")
    assert children(attribute) == ATTRIBUTE_FIELDS
    assert attribute.findtext("variable") == "true"
    keys = [value.findtext("key") for value in attribute.findall("values/value")]
    assert keys == ["air_conditioner", "renovation", "music", "pets", "other"]
    assert children(attribute.findall("values/value")[0]) == ["key", "name"]


def test_a_service_without_questions_has_an_empty_attribute_list(o311: Open311) -> None:
    assert json_of(o311.get("/services/city_env.graffiti.json"))["attributes"] == []


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_an_unknown_service_code_is_a_404_error_list(o311: Open311, fmt: str) -> None:
    [description] = assert_spec_error(o311.get(f"/services/city_env.nothing.{fmt}"), 404, fmt)
    assert "city_env.nothing" in description


def test_an_unknown_format_is_a_404_in_xml(o311: Open311) -> None:
    assert_spec_error(o311.get("/services.csv"), 404, "xml")


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_a_path_no_route_knows_is_a_spec_404(o311: Open311, fmt: str) -> None:
    assert_spec_error(o311.get(f"/nothing_here.{fmt}"), 404, fmt)


def test_a_wrong_method_is_a_spec_405(o311: Open311) -> None:
    response = o311.client.delete("/open311/v2/services.json")
    assert_spec_error(response, 405, "json")


def test_other_paths_keep_the_apps_own_error_body(o311: Open311) -> None:
    response = o311.client.get("/api/v1/nothing")
    assert response.status_code == 404
    assert "error" in response.json()


def test_every_list_element_has_an_item_name() -> None:
    assert ITEM_TAGS["services"] == "service"
    assert ITEM_TAGS["service_requests"] == "request"
    assert ITEM_TAGS["errors"] == "error"
