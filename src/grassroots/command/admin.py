"""The category catalogue for administrators: a page per major → minor class, an edit form, and
the JSON API (list, read, PATCH with expected_version, POST a new minor class).

Every change goes through the command core (actions.update_category / create_category), which
checks the whole category again, compares-and-sets its version and writes the audit row. The
form checks the fields first only to put a Chinese message next to each bad field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from grassroots.command import actions, queries
from grassroots.command.categories import (
    AttributeSpec,
    CategorySpec,
    DuplicateRule,
    Limit,
    spec_of,
)
from grassroots.command.models import IncidentCategory
from grassroots.command.request_deps import (
    ClientIp,
    LanguageDep,
    RuntimeDep,
    SessionDep,
    as_actor,
    render,
    require_any,
)
from grassroots.command.states import LimitUnit, Tier, UnitType
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Permission, has_permission
from grassroots.kernel.errors import Conflict, GrassrootsError, NotFound, ValidationFailed
from grassroots.kernel.i18n import translate

router = APIRouter()

# The catalogue page is for those who run the loop; changing it needs categories.edit.
CatalogueViewer = Annotated[User, Depends(require_any(
    Permission.CATEGORIES_EDIT, Permission.INCIDENTS_DISPATCH, Permission.INCIDENTS_SUPERVISE))]
# The JSON list is read by every client that files or works incidents (phones, Open311 tools).
CatalogueReader = Annotated[User, Depends(require_any(
    Permission.CATEGORIES_EDIT, Permission.INCIDENTS_READ, Permission.INCIDENTS_REPORT))]
CatalogueEditor = Annotated[User, Depends(require_any(Permission.CATEGORIES_EDIT))]


# --- the pages ---------------------------------------------------------------------------------


@dataclass
class MajorClass:
    code: str
    name_zh: str
    name_en: str
    categories: list[IncidentCategory] = field(default_factory=list)


def _majors(categories: Sequence[IncidentCategory]) -> list[MajorClass]:
    majors: dict[str, MajorClass] = {}
    for category in categories:
        majors.setdefault(category.major_code, MajorClass(
            category.major_code, category.major_name_zh, category.major_name_en,
        )).categories.append(category)
    return list(majors.values())


def _questions(category: IncidentCategory) -> list[AttributeSpec]:
    return list(spec_of(category).attributes)


@router.get("/admin/categories", response_class=HTMLResponse, include_in_schema=False)
def categories_page(request: Request, user: CatalogueViewer, session: SessionDep,
                    updated: str = "") -> HTMLResponse:
    """Every category, major class by major class, with its rules."""
    categories = queries.list_categories(session=session, include_inactive=True)
    return render(request, "command/admin/categories.html", majors=_majors(categories),
                  questions=_questions, updated=updated,
                  can_edit=has_permission(user.role, Permission.CATEGORIES_EDIT))


def _category_or_404(session: Session, code: str) -> IncidentCategory:
    category = queries.get_category(session=session, code=code)
    if category is None:
        raise NotFound()
    return category


# The form's fields: each is one editable value of CategorySpec.
FORM_FIELDS = ("name_zh", "name_en", "urgency", "limit_value", "limit_unit", "unit_type",
               "is_police", "may_close_at", "on_scene_required", "duplicate_radius_m",
               "duplicate_window_min", "attributes", "active")
_CHECKBOXES = ("is_police", "on_scene_required", "active")
_INTEGERS = ("urgency", "limit_value", "duplicate_radius_m", "duplicate_window_min")
# Where a CategorySpec error location lands on the form.
_LOC_FIELDS: dict[tuple[str, ...], str] = {
    ("limit", "value"): "limit_value",
    ("limit", "unit"): "limit_unit",
    ("duplicate", "radius_m"): "duplicate_radius_m",
    ("duplicate", "window_min"): "duplicate_window_min",
}


def _form_values(category: IncidentCategory) -> dict[str, Any]:
    """The edit form filled from the stored category."""
    spec = spec_of(category)
    return {
        "name_zh": spec.name_zh, "name_en": spec.name_en, "urgency": str(spec.urgency),
        "limit_value": str(spec.limit.value), "limit_unit": spec.limit.unit.value,
        "unit_type": spec.unit_type.value, "is_police": spec.is_police,
        "may_close_at": spec.may_close_at.value, "on_scene_required": spec.on_scene_required,
        "duplicate_radius_m": str(spec.duplicate.radius_m),
        "duplicate_window_min": str(spec.duplicate.window_min),
        "attributes": json.dumps([a.model_dump(mode="json", exclude_defaults=True)
                                  for a in spec.attributes], ensure_ascii=False, indent=1),
        "active": spec.active, "version": str(category.version),
    }


def _submitted(form: FormData) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in (*FORM_FIELDS, "version"):
        raw = form.get(name)
        text = raw.strip() if isinstance(raw, str) else ""
        values[name] = bool(text) if name in _CHECKBOXES else text
    return values


def _field_message(error: ErrorDetails, language: str) -> str:
    """A pydantic error in the reader's language, from its type and limits."""
    kind, ctx = error["type"], error.get("ctx") or {}
    message_id = {
        "greater_than_equal": "command.admin.error.ge",
        "less_than_equal": "command.admin.error.le",
        "string_too_short": "command.admin.error.blank",
        "string_too_long": "command.admin.error.too_long",
        "enum": "command.admin.error.choice",
        "string_pattern_mismatch": "command.admin.error.pattern",
        "missing": "command.admin.error.missing",
        "extra_forbidden": "command.admin.error.unknown_field",
    }.get(kind)
    if kind.startswith(("int_", "float_")):
        message_id = "command.admin.error.integer"
    if message_id is None:
        return translate("command.admin.error.other", language,
                         detail=str(error["msg"]).removeprefix("Value error, "))
    return translate(message_id, language, ge=ctx.get("ge"), le=ctx.get("le"),
                     max=ctx.get("max_length"),
                     field=".".join(str(p) for p in error["loc"]))


def _changes_and_errors(values: Mapping[str, Any],
                        language: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The form as update_category changes, and a message for each field that is wrong."""
    errors: dict[str, str] = {}
    numbers: dict[str, Any] = {}
    for name in _INTEGERS:
        try:
            numbers[name] = int(values[name])
        except ValueError:
            errors[name] = translate("command.admin.error.integer", language)
            numbers[name] = values[name]
    attributes: Any = []
    if values["attributes"]:
        try:
            attributes = json.loads(values["attributes"])
        except json.JSONDecodeError as exc:
            errors["attributes"] = translate("command.admin.error.json", language,
                                             detail=f"{exc.msg} ({exc.lineno}:{exc.colno})")
        if not isinstance(attributes, list):
            errors.setdefault("attributes", translate("command.admin.error.json_list", language))
            attributes = []
    if values["is_police"] and values["unit_type"] != UnitType.POLICE.value:
        errors["unit_type"] = translate("command.admin.error.police_unit", language)
    changes = {
        "name_zh": values["name_zh"], "name_en": values["name_en"],
        "urgency": numbers["urgency"],
        "limit": {"value": numbers["limit_value"], "unit": values["limit_unit"]},
        "unit_type": values["unit_type"], "is_police": values["is_police"],
        "may_close_at": values["may_close_at"],
        "on_scene_required": values["on_scene_required"],
        "duplicate": {"radius_m": numbers["duplicate_radius_m"],
                      "window_min": numbers["duplicate_window_min"]},
        "attributes": attributes, "active": values["active"],
    }
    return changes, errors


def _spec_errors(code: str, changes: Mapping[str, Any], language: str) -> dict[str, str]:
    """Every problem CategorySpec finds, keyed by the form field it belongs to."""
    try:
        CategorySpec.model_validate({"code": code, **changes})
    except ValidationError as exc:
        errors: dict[str, str] = {}
        for error in exc.errors():
            loc = tuple(str(part) for part in error["loc"])
            name = _LOC_FIELDS.get(loc[:2]) or (loc[0] if loc else "")
            if name == "attributes" and len(loc) > 1:
                message = translate("command.admin.error.question", language,
                                    n=int(loc[1]) + 1 if loc[1].isdigit() else loc[1],
                                    detail=_field_message(error, language))
            else:
                message = _field_message(error, language)
            errors.setdefault(name if name in FORM_FIELDS else "", message)
        return errors
    return {}


def _render_edit(request: Request, category: IncidentCategory, values: Mapping[str, Any], *,
                 errors: Mapping[str, str] | None = None, error: str | None = None,
                 status_code: int = 200) -> HTMLResponse:
    return render(request, "command/admin/category_edit.html", status_code=status_code,
                  category=category, values=values, errors=errors or {}, error=error,
                  limit_units=list(LimitUnit), unit_types=list(UnitType), tiers=list(Tier))


@router.get("/admin/categories/{code}", response_class=HTMLResponse, include_in_schema=False)
def category_edit_page(request: Request, code: str, user: CatalogueEditor,
                       session: SessionDep) -> HTMLResponse:
    category = _category_or_404(session, code)
    return _render_edit(request, category, _form_values(category))


async def _form(request: Request) -> FormData:
    return await request.form()


@router.post("/admin/categories/{code}", include_in_schema=False)
def category_edit_submit(request: Request, code: str, user: CatalogueEditor,
                         session: SessionDep, runtime: RuntimeDep, ip: ClientIp,
                         language: LanguageDep,
                         form: Annotated[FormData, Depends(_form)]) -> Response:
    """Save the form through update_category; problems come back next to their fields."""
    category = _category_or_404(session, code)
    values = _submitted(form)
    changes, errors = _changes_and_errors(values, language)
    if not errors:
        errors = _spec_errors(category.code, changes, language)
    if errors:
        return _render_edit(request, category, values, errors=errors, status_code=422)
    version = int(values["version"]) if values["version"].isdigit() else None
    try:
        actions.update_category(session=session, runtime=runtime, actor=as_actor(user),
                                code=category.code, changes=changes, expected_version=version,
                                source_ip=ip)
    except Conflict as exc:
        # Someone saved first: show what is stored now, so nobody overwrites it blind.
        fresh = _category_or_404(session, code)
        session.refresh(fresh)
        return _render_edit(request, fresh, _form_values(fresh), status_code=409,
                            error=translate("command.admin.conflict", language)
                            if exc.message_id == "command.error.concurrent_change"
                            else exc.message(language))
    except GrassrootsError as exc:
        return _render_edit(request, category, values, error=exc.message(language),
                            status_code=exc.status_code)
    return RedirectResponse(f"/admin/categories?updated={category.code}", status_code=303)


# --- the JSON API ------------------------------------------------------------------------------


class CategoryOut(BaseModel):
    """A minor class with its major class, its rules and its version (for expected_version)."""

    code: str
    major_code: str
    major_name_zh: str
    major_name_en: str
    name_zh: str
    name_en: str
    urgency: int
    limit: Limit
    unit_type: UnitType
    is_police: bool
    may_close_at: Tier
    on_scene_required: bool
    duplicate: DuplicateRule
    attributes: list[AttributeSpec]
    active: bool
    sort_order: int
    version: int
    updated_at: datetime


def category_out(category: IncidentCategory) -> CategoryOut:
    spec = spec_of(category)
    return CategoryOut(
        **spec.model_dump(exclude={"attributes"}), attributes=list(spec.attributes),
        major_code=category.major_code, major_name_zh=category.major_name_zh,
        major_name_en=category.major_name_en, sort_order=category.sort_order,
        version=category.version, updated_at=category.updated_at)


class CategoryPatch(BaseModel):
    """The fields to change (others stay); expected_version guards against a lost update."""

    model_config = ConfigDict(extra="forbid")

    expected_version: int | None = Field(default=None, description="409 if the stored "
                                         "version differs")
    name_zh: str | None = None
    name_en: str | None = None
    urgency: int | None = None
    limit: dict[str, Any] | None = None
    unit_type: str | None = None
    is_police: bool | None = None
    may_close_at: str | None = None
    on_scene_required: bool | None = None
    duplicate: dict[str, Any] | None = None
    attributes: list[dict[str, Any]] | None = None
    active: bool | None = None


class CategoryCreate(BaseModel):
    """A new minor class; a new major class also needs its names."""

    model_config = ConfigDict(extra="forbid")

    major_code: str
    major_name_zh: str | None = None
    major_name_en: str | None = None
    code: str
    name_zh: str
    name_en: str
    urgency: int
    limit: dict[str, Any]
    unit_type: str
    is_police: bool = False
    may_close_at: str
    on_scene_required: bool = True
    duplicate: dict[str, Any]
    attributes: list[dict[str, Any]] = Field(default_factory=list)
    active: bool = True


@router.get("/api/v1/categories", response_model=list[CategoryOut], tags=["categories"])
def list_categories(user: CatalogueReader, session: SessionDep,
                    include_inactive: Annotated[bool, Query()] = False) -> list[CategoryOut]:
    """The catalogue in display order (active classes unless include_inactive)."""
    rows = queries.list_categories(session=session, include_inactive=include_inactive)
    return [category_out(row) for row in rows]


@router.get("/api/v1/categories/{code}", response_model=CategoryOut, tags=["categories"])
def get_category(code: str, user: CatalogueReader, session: SessionDep) -> CategoryOut:
    return category_out(_category_or_404(session, code))


@router.patch("/api/v1/categories/{code}", response_model=CategoryOut, tags=["categories"])
def patch_category(code: str, body: CategoryPatch, user: CatalogueEditor, session: SessionDep,
                   runtime: RuntimeDep, ip: ClientIp) -> CategoryOut:
    """Change some fields; 409 when expected_version is not the stored version."""
    changes = body.model_dump(exclude_unset=True, exclude={"expected_version"})
    if not changes:
        raise ValidationFailed("command.admin.error.no_changes")
    current = spec_of(_category_or_404(session, code)).model_dump(mode="json")
    for key in ("limit", "duplicate"):  # {"limit": {"value": 6}} keeps the unit
        if isinstance(changes.get(key), dict):
            changes[key] = current[key] | changes[key]
    category = actions.update_category(session=session, runtime=runtime, actor=as_actor(user),
                                       code=code, changes=changes,
                                       expected_version=body.expected_version, source_ip=ip)
    return category_out(category)


@router.post("/api/v1/categories", response_model=CategoryOut, status_code=201,
             tags=["categories"])
def create_category(body: CategoryCreate, response: Response, user: CatalogueEditor,
                    session: SessionDep, runtime: RuntimeDep, ip: ClientIp) -> CategoryOut:
    """Add a minor class under a major class."""
    spec = body.model_dump(exclude={"major_code", "major_name_zh", "major_name_en"})
    category = actions.create_category(session=session, runtime=runtime, actor=as_actor(user),
                                       major_code=body.major_code, spec=spec,
                                       major_name_zh=body.major_name_zh,
                                       major_name_en=body.major_name_en, source_ip=ip)
    response.headers["Location"] = f"/api/v1/categories/{category.code}"
    return category_out(category)
