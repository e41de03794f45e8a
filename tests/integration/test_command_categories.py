"""Loading the default categories and editing them: idempotent, validated, audited."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from tests.integration.command_support import ADMIN, CALENDAR, make_user

import grassroots.command.models  # noqa: F401  (registers the tables before create_all)
from grassroots.command import actions, queries
from grassroots.command.categories import read_default_catalogue
from grassroots.command.models import IncidentCategory
from grassroots.command.states import LimitUnit
from grassroots.kernel.audit.models import AuditRow
from grassroots.kernel.auth.roles import Role
from grassroots.kernel.errors import Conflict, NotFound, PermissionDenied, ValidationFailed
from grassroots.runtime import Runtime


def _audit(session: Session, action: str) -> list[AuditRow]:
    return list(session.scalars(sa.select(AuditRow).where(AuditRow.action == action)))


def test_loading_the_defaults_creates_every_category_once_and_audits_it(
        session: Session, runtime: Runtime) -> None:
    expected = sum(len(m.categories) for m in read_default_catalogue().classes)
    first = actions.load_default_categories(session=session, runtime=runtime, actor=ADMIN)
    second = actions.load_default_categories(session=session, runtime=runtime, actor=ADMIN)
    assert len(first.created) == expected and first.kept == []
    assert second.created == [] and len(second.kept) == expected
    assert session.scalar(sa.select(sa.func.count()).select_from(IncidentCategory)) == expected
    assert len(_audit(session, "category:load_defaults")) == 1
    fight = queries.get_category(session=session, code="security.fight")
    assert fight is not None and fight.is_police and fight.major_name_zh == "治安"
    assert [a["code"] for a in json.loads(fight.attributes)] == ["injured", "people"]


def test_a_reload_keeps_a_deployments_edits(session: Session, runtime: Runtime) -> None:
    actions.load_default_categories(session=session, runtime=runtime, actor=ADMIN)
    actions.update_category(session=session, runtime=runtime, actor=ADMIN,
                            code="hotline.complaint",
                            changes={"limit": {"value": 13, "unit": "working_days"}})
    actions.load_default_categories(session=session, runtime=runtime, actor=ADMIN)
    complaint = queries.get_category(session=session, code="hotline.complaint")
    assert complaint is not None and complaint.limit_value == 13


def test_an_admin_edits_a_category_and_the_change_is_audited(
        session: Session, runtime: Runtime) -> None:
    actions.load_default_categories(session=session, runtime=runtime, actor=ADMIN)
    admin = make_user(session, Role.SYSTEM_ADMIN)
    session.commit()
    updated = actions.update_category(
        session=session, runtime=runtime, actor=admin, code="hotline.complaint",
        changes={"limit": {"value": 8, "unit": "working_days"}, "urgency": 2},
        expected_version=1)
    assert (updated.limit_value, updated.limit_unit, updated.urgency, updated.version) == (
        8, LimitUnit.WORKING_DAYS, 2, 2)
    [row] = _audit(session, "category:update")
    detail = json.loads(row.detail)
    assert detail["changed"]["urgency"] == {"from": 3, "to": 2}
    assert row.actor == admin.username


@pytest.mark.parametrize("changes", [
    {"urgency": 5},
    {"limit": {"value": 3, "unit": "fortnights"}},
    {"unit_type": "ghostbusters"},
    {"code": "hotline.other"},
    {"duplicate": {"radius_m": -1, "window_min": 10}},
])
def test_a_bad_edit_is_refused_and_changes_nothing(session: Session, runtime: Runtime,
                                                    changes: dict[str, Any]) -> None:
    actions.load_default_categories(session=session, runtime=runtime, actor=ADMIN)
    with pytest.raises(ValidationFailed):
        actions.update_category(session=session, runtime=runtime, actor=ADMIN,
                                code="hotline.complaint", changes=changes)
    complaint = queries.get_category(session=session, code="hotline.complaint")
    assert complaint is not None and complaint.version == 1
    assert _audit(session, "category:update") == []


def test_only_category_editors_may_edit(session: Session, runtime: Runtime) -> None:
    actions.load_default_categories(session=session, runtime=runtime, actor=ADMIN)
    dispatcher = make_user(session, Role.DISPATCHER)
    session.commit()
    with pytest.raises(PermissionDenied):
        actions.update_category(session=session, runtime=runtime, actor=dispatcher,
                                code="hotline.complaint", changes={"urgency": 1})
    with pytest.raises(PermissionDenied):
        actions.load_default_categories(session=session, runtime=runtime, actor=dispatcher)


def test_a_stale_edit_is_a_conflict_and_an_unknown_code_is_not_found(
        session: Session, runtime: Runtime) -> None:
    actions.load_default_categories(session=session, runtime=runtime, actor=ADMIN)
    actions.update_category(session=session, runtime=runtime, actor=ADMIN,
                            code="hotline.complaint", changes={"urgency": 2})
    with pytest.raises(Conflict):
        actions.update_category(session=session, runtime=runtime, actor=ADMIN,
                                code="hotline.complaint", changes={"urgency": 4},
                                expected_version=1)
    with pytest.raises(NotFound):
        actions.update_category(session=session, runtime=runtime, actor=ADMIN,
                                code="no.such", changes={"urgency": 4})


def test_a_deactivated_category_takes_no_new_reports(session: Session, runtime: Runtime) -> None:
    actions.load_default_categories(session=session, runtime=runtime, actor=ADMIN)
    actions.update_category(session=session, runtime=runtime, actor=ADMIN,
                            code="ad.damaged_banner", changes={"active": False})
    codes = {c.code for c in queries.list_categories(session=session)}
    assert "ad.damaged_banner" not in codes
    assert "ad.damaged_banner" in {c.code for c in queries.list_categories(
        session=session, include_inactive=True)}
    with pytest.raises(ValidationFailed):
        actions.intake(session=session, runtime=runtime, actor=ADMIN, channel="phone",
                       category_code="ad.damaged_banner", calendar=CALENDAR,
                       address_text="双福大道 8 号")
