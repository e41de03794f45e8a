"""The shipped category catalogue and the checks on categories and their extra questions."""

from __future__ import annotations

import json

import pytest

from grassroots.command.categories import (
    CategorySpec,
    apply_changes,
    parse_catalogue,
    read_default_catalogue,
    validate_answers,
)
from grassroots.command.states import LimitUnit, UnitType
from grassroots.kernel.errors import ValidationFailed


def _spec(code: str) -> CategorySpec:
    return next(c for m in read_default_catalogue().classes for c in m.categories
                if c.code == code)


def test_the_default_catalogue_covers_every_major_class_the_brief_names() -> None:
    catalogue = read_default_catalogue()
    names = {m.name_zh for m in catalogue.classes}
    assert {"市容环境", "宣传广告", "施工管理", "街面秩序", "突发事件", "矛盾纠纷", "治安",
            "设施维修", "灌区"} <= names
    hotline = {c.name_zh for m in catalogue.classes if m.code == "hotline" for c in m.categories}
    assert {"咨询", "求助", "投诉", "举报", "建议"} <= hotline
    assert 40 <= sum(len(m.categories) for m in catalogue.classes) <= 60


def test_the_default_limits_follow_hotline_practice() -> None:
    enquiry, complaint = _spec("hotline.enquiry"), _spec("hotline.complaint")
    assert (enquiry.limit.value, enquiry.limit.unit) == (3, LimitUnit.WORKING_DAYS)
    assert (complaint.limit.value, complaint.limit.unit) == (5, LimitUnit.WORKING_DAYS)
    urgent = _spec("hotline.urgent_help")
    assert (urgent.urgency, urgent.limit.value, urgent.limit.unit) == (
        1, 4, LimitUnit.WORKING_HOURS)


def test_police_work_is_flagged_and_goes_to_the_police() -> None:
    police = [c for m in read_default_catalogue().classes for c in m.categories if c.is_police]
    assert police and all(c.unit_type == UnitType.POLICE for c in police)
    assert all(c.code.startswith("security.") for c in police)


def test_irrigation_categories_go_to_the_irrigation_office() -> None:
    breach = _spec("irrigation.canal_breach")
    assert breach.unit_type == UnitType.IRRIGATION_OFFICE and breach.urgency == 1
    assert {a.code for a in breach.attributes} >= {"canal_level"}


def test_a_catalogue_with_a_repeated_code_is_refused() -> None:
    raw = read_default_catalogue().model_dump(mode="json")
    first = raw["classes"][0]["categories"][0]
    raw["classes"][0]["categories"].append(first)
    with pytest.raises(ValidationFailed):
        parse_catalogue(json.dumps(raw))


def test_a_police_category_sent_to_another_unit_is_refused() -> None:
    spec = _spec("security.fight")
    with pytest.raises(ValidationFailed):
        apply_changes(spec, {"unit_type": "zone_team"})


def test_a_change_is_checked_as_a_whole() -> None:
    spec = _spec("hotline.complaint")
    changed = apply_changes(spec, {"limit": {"value": 13, "unit": "working_days"}})
    assert changed.limit.value == 13
    for bad in ({"urgency": 0}, {"limit": {"value": 0, "unit": "hours"}},
                {"may_close_at": "galaxy"}, {"nonsense": 1},
                {"attributes": [{"code": "x", "datatype": "singlevaluelist",
                                 "description": "no values"}]}):
        with pytest.raises(ValidationFailed):
            apply_changes(spec, bad)


def test_the_code_of_a_category_cannot_change() -> None:
    with pytest.raises(ValidationFailed):
        apply_changes(_spec("hotline.complaint"), {"code": "hotline.moan"})


def test_answers_are_checked_against_the_questions() -> None:
    questions = _spec("security.fight").attributes  # injured (required list), people (number)
    assert validate_answers(questions, {"injured": "yes", "people": "3"}) == {
        "injured": "yes", "people": 3}
    with pytest.raises(ValidationFailed):
        validate_answers(questions, {"people": 3})  # required question missing
    with pytest.raises(ValidationFailed):
        validate_answers(questions, {"injured": "maybe"})
    with pytest.raises(ValidationFailed):
        validate_answers(questions, {"injured": "no", "people": "many"})
    with pytest.raises(ValidationFailed):
        validate_answers(questions, {"injured": "no", "colour": "red"})


def test_multi_value_and_datetime_answers_are_normalised() -> None:
    spec = CategorySpec.model_validate({
        "code": "x.y", "name_zh": "测", "name_en": "t", "urgency": 3,
        "limit": {"value": 1, "unit": "hours"}, "unit_type": "zone_team",
        "may_close_at": "grid", "duplicate": {"radius_m": 0, "window_min": 0},
        "attributes": [
            {"code": "kinds", "datatype": "multivaluelist", "description": "种类",
             "values": [{"key": "a", "name": "甲"}, {"key": "b", "name": "乙"}]},
            {"code": "seen", "datatype": "datetime", "description": "时间"}]})
    got = validate_answers(spec.attributes, {"kinds": ["a", "b"], "seen": "2026-03-10T09:30+08:00"})
    assert got == {"kinds": ["a", "b"], "seen": "2026-03-10T09:30:00+08:00"}
    assert validate_answers(spec.attributes, {"kinds": "a"}) == {"kinds": ["a"]}
    with pytest.raises(ValidationFailed):
        validate_answers(spec.attributes, {"kinds": ["a", "z"]})
    with pytest.raises(ValidationFailed):
        validate_answers(spec.attributes, {"seen": "yesterday"})
