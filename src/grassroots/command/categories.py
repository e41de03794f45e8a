"""The category catalogue (major class → minor class) and the checks every edit must pass.

The shipped default lives in data/categories_default.json; a deployment edits categories through
actions.update_category, and every value goes through CategorySpec first.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from grassroots.command.models import IncidentCategory
from grassroots.command.states import (
    DESCRIPTION_MAX_CHARS,
    AttributeType,
    LimitUnit,
    Tier,
    UnitType,
)
from grassroots.kernel.errors import ValidationFailed

DEFAULT_CATALOGUE = "data/categories_default.json"
STRING_MAX_CHARS = 200
_CODE = r"^[a-z][a-z0-9_]*$"
_LIST_TYPES = frozenset({AttributeType.SINGLEVALUELIST, AttributeType.MULTIVALUELIST})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AttributeValue(_Strict):
    key: str = Field(min_length=1, max_length=60)
    name: str = Field(min_length=1, max_length=120)


class AttributeSpec(_Strict):
    """One extra question (an Open311 attribute)."""

    code: str = Field(pattern=_CODE, max_length=60)
    datatype: AttributeType
    required: bool = False
    description: str = Field(min_length=1, max_length=300)
    description_en: str = Field(default="", max_length=300)
    values: tuple[AttributeValue, ...] = ()

    @model_validator(mode="after")
    def _values_match_type(self) -> AttributeSpec:
        if (self.datatype in _LIST_TYPES) != bool(self.values):
            raise ValueError(f"attribute {self.code}: values are needed for (and only for) "
                             "singlevaluelist and multivaluelist")
        keys = [v.key for v in self.values]
        if len(keys) != len(set(keys)):
            raise ValueError(f"attribute {self.code}: duplicate value keys")
        return self


class Limit(_Strict):
    value: int = Field(ge=1, le=2000)
    unit: LimitUnit


class DuplicateRule(_Strict):
    radius_m: int = Field(ge=0, le=5000)
    window_min: int = Field(ge=0, le=7 * 24 * 60)


class CategorySpec(_Strict):
    """A minor class, as in the JSON and as every edit must leave it."""

    code: str = Field(pattern=r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$", max_length=60)
    name_zh: str = Field(min_length=1, max_length=60)
    name_en: str = Field(min_length=1, max_length=120)
    urgency: int = Field(ge=1, le=4)
    limit: Limit
    unit_type: UnitType
    is_police: bool = False
    may_close_at: Tier
    on_scene_required: bool = True
    duplicate: DuplicateRule
    attributes: tuple[AttributeSpec, ...] = ()
    active: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> CategorySpec:
        if self.is_police and self.unit_type != UnitType.POLICE:
            raise ValueError(f"{self.code}: police work must go to the police unit")
        codes = [a.code for a in self.attributes]
        if len(codes) != len(set(codes)):
            raise ValueError(f"{self.code}: duplicate attribute codes")
        return self


class MajorClassSpec(_Strict):
    code: str = Field(pattern=_CODE, max_length=40)
    name_zh: str = Field(min_length=1, max_length=60)
    name_en: str = Field(min_length=1, max_length=80)
    categories: tuple[CategorySpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _codes_in_class(self) -> MajorClassSpec:
        for category in self.categories:
            if not category.code.startswith(self.code + "."):
                raise ValueError(f"{category.code} must start with {self.code}.")
        return self


class Catalogue(_Strict):
    version: int = Field(ge=1)
    classes: tuple[MajorClassSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Catalogue:
        codes = [c.code for m in self.classes for c in m.categories]
        if len(codes) != len(set(codes)):
            raise ValueError("category codes must be unique")
        return self


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else str(first["msg"])


def parse_catalogue(text: str) -> Catalogue:
    """Parse and check a catalogue JSON document; ValidationFailed names the first problem."""
    try:
        return Catalogue.model_validate_json(text)
    except ValidationError as exc:
        raise ValidationFailed("command.error.bad_catalogue", detail=_describe(exc)) from None


def read_default_catalogue(path: Path | None = None) -> Catalogue:
    """The shipped catalogue, or a deployment's own file when `path` is given."""
    if path is not None:
        return parse_catalogue(path.read_text(encoding="utf-8"))
    resource = resources.files("grassroots.command").joinpath(DEFAULT_CATALOGUE)
    return parse_catalogue(resource.read_text(encoding="utf-8"))


def row_values(spec: CategorySpec) -> dict[str, Any]:
    """The IncidentCategory column values for a spec (the major class fields excepted)."""
    return {
        "code": spec.code,
        "name_zh": spec.name_zh,
        "name_en": spec.name_en,
        "urgency": spec.urgency,
        "limit_value": spec.limit.value,
        "limit_unit": spec.limit.unit,
        "unit_type": spec.unit_type,
        "is_police": spec.is_police,
        "may_close_at": spec.may_close_at,
        "on_scene_required": spec.on_scene_required,
        "duplicate_radius_m": spec.duplicate.radius_m,
        "duplicate_window_min": spec.duplicate.window_min,
        "attributes": json.dumps([a.model_dump(mode="json") for a in spec.attributes],
                                 ensure_ascii=False),
        "active": spec.active,
    }


def spec_of(category: IncidentCategory) -> CategorySpec:
    """The spec a stored category row holds."""
    return CategorySpec.model_validate({
        "code": category.code,
        "name_zh": category.name_zh,
        "name_en": category.name_en,
        "urgency": category.urgency,
        "limit": {"value": category.limit_value, "unit": category.limit_unit},
        "unit_type": category.unit_type,
        "is_police": category.is_police,
        "may_close_at": category.may_close_at,
        "on_scene_required": category.on_scene_required,
        "duplicate": {"radius_m": category.duplicate_radius_m,
                      "window_min": category.duplicate_window_min},
        "attributes": json.loads(category.attributes or "[]"),
        "active": category.active,
    })


def apply_changes(spec: CategorySpec, changes: Mapping[str, Any]) -> CategorySpec:
    """The spec with `changes` applied, checked as a whole; the code never changes."""
    if "code" in changes and changes["code"] != spec.code:
        raise ValidationFailed("command.error.category_code_fixed")
    merged = spec.model_dump(mode="json") | dict(changes)
    try:
        return CategorySpec.model_validate(merged)
    except ValidationError as exc:
        raise ValidationFailed("command.error.bad_category", detail=_describe(exc)) from None


def attributes_of(category: IncidentCategory) -> tuple[AttributeSpec, ...]:
    return spec_of(category).attributes


def _number(code: str, value: Any) -> int | float:
    if isinstance(value, bool):
        raise ValidationFailed("command.error.bad_attribute", code=code)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValidationFailed("command.error.bad_attribute", code=code) from None
    if not math.isfinite(number):
        raise ValidationFailed("command.error.bad_attribute", code=code)
    return int(number) if number.is_integer() else number


def _text(code: str, value: Any, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise ValidationFailed("command.error.bad_attribute", code=code)
    return value


def _moment(code: str, value: Any) -> str:
    try:
        return datetime.fromisoformat(str(value)).isoformat()
    except ValueError:
        raise ValidationFailed("command.error.bad_attribute", code=code) from None


def _one_of(spec: AttributeSpec, value: Any) -> str:
    if value not in {v.key for v in spec.values}:
        raise ValidationFailed("command.error.bad_attribute", code=spec.code)
    return str(value)


def _many_of(spec: AttributeSpec, value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else list(value)
    return [_one_of(spec, item) for item in items]


_CONVERTERS = {
    AttributeType.STRING: lambda s, v: _text(s.code, v, STRING_MAX_CHARS),
    AttributeType.TEXT: lambda s, v: _text(s.code, v, DESCRIPTION_MAX_CHARS),
    AttributeType.NUMBER: lambda s, v: _number(s.code, v),
    AttributeType.DATETIME: lambda s, v: _moment(s.code, v),
    AttributeType.SINGLEVALUELIST: _one_of,
    AttributeType.MULTIVALUELIST: _many_of,
}


def _blank(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == ()


def validate_answers(specs: tuple[AttributeSpec, ...],
                     answers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check answers to a category's extra questions; returns them in stored form."""
    answers = answers or {}
    by_code = {spec.code: spec for spec in specs}
    unknown = sorted(set(answers) - set(by_code))
    if unknown:
        raise ValidationFailed("command.error.unknown_attribute", code=unknown[0])
    result: dict[str, Any] = {}
    for spec in specs:
        value = answers.get(spec.code)
        if _blank(value):
            if spec.required:
                raise ValidationFailed("command.error.attribute_required", code=spec.code)
            continue
        result[spec.code] = _CONVERTERS[spec.datatype](spec, value)
    return result
