"""The incident state machine's table and pure rules, rule by rule."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from grassroots.command.states import (
    EARTH_RADIUS_M,
    ESCALATION_CHAINS,
    TERMINAL_STATES,
    TRANSITIONS,
    Action,
    Audience,
    DeadlineKind,
    IncidentState,
    LimitUnit,
    NoticeLevel,
    Tier,
    TierBreach,
    TransitionContext,
    TransitionRule,
    breach_notice_level,
    check_transition,
    format_number,
    handling_due,
    has_next_deadline,
    haversine_m,
    next_audience,
    normalize_phone,
    warn_time,
)
from grassroots.kernel.auth.roles import Role
from grassroots.kernel.errors import Conflict, PermissionDenied, ValidationFailed

RULES = sorted(TRANSITIONS.values(), key=lambda r: r.action)
IDS = [r.action.value for r in RULES]
COMMAND_SRC = Path(__file__).resolve().parents[2] / "src" / "grassroots" / "command"


def _role(rule: TransitionRule) -> Role:
    return sorted(rule.roles)[0]


def _state(rule: TransitionRule) -> IncidentState:
    return sorted(rule.from_states)[0]


@pytest.mark.parametrize("rule", RULES, ids=IDS)
def test_every_rule_allows_its_roles_from_each_of_its_states(rule: TransitionRule) -> None:
    for role in rule.roles:
        for state in rule.from_states:
            context = TransitionContext(may_close_at=Tier.GRID, on_scene_required=False)
            got = check_transition(state, rule.action, role, reason="because", context=context)
            assert got is rule


@pytest.mark.parametrize("rule", RULES, ids=IDS)
def test_every_rule_refuses_every_other_state_with_conflict(rule: TransitionRule) -> None:
    others = set(IncidentState) - rule.from_states
    assert others, "a rule open from every state would be suspicious"
    for state in others:
        with pytest.raises(Conflict) as caught:
            check_transition(state, rule.action, _role(rule), reason="because")
        assert caught.value.message_id == "command.error.wrong_state"


@pytest.mark.parametrize("rule", RULES, ids=IDS)
def test_every_rule_refuses_every_other_role_with_permission_denied(rule: TransitionRule) -> None:
    for role in set(Role) - rule.roles:
        with pytest.raises(PermissionDenied):
            check_transition(_state(rule), rule.action, role, reason="because")


@pytest.mark.parametrize("rule", [r for r in RULES if r.reason_required],
                         ids=[r.action.value for r in RULES if r.reason_required])
def test_a_rule_that_needs_a_reason_refuses_none_and_blank(rule: TransitionRule) -> None:
    for reason in (None, "", "   "):
        with pytest.raises(ValidationFailed):
            check_transition(_state(rule), rule.action, _role(rule), reason=reason)


@pytest.mark.parametrize("rule", [r for r in RULES if not r.reason_required],
                         ids=[r.action.value for r in RULES if not r.reason_required])
def test_a_rule_without_a_reason_requirement_passes_without_one(rule: TransitionRule) -> None:
    context = TransitionContext(may_close_at=Tier.GRID, on_scene_required=False)
    assert check_transition(_state(rule), rule.action, _role(rule), context=context) is rule


def test_the_exception_paths_all_need_a_reason() -> None:
    needing = {a for a, r in TRANSITIONS.items() if r.reason_required}
    assert {Action.EXTEND, Action.SEND_BACK, Action.VOID, Action.SUSPEND, Action.RESUME,
            Action.SUPERVISE, Action.REOPEN} <= needing


def test_only_register_dispatch_and_escalate_may_be_taken_by_the_platform_itself() -> None:
    for rule in RULES:
        if rule.action in (Action.REGISTER, Action.DISPATCH, Action.ESCALATE):
            assert check_transition(_state(rule), rule.action, None, reason="by rule") is rule
        else:
            with pytest.raises(PermissionDenied):
                check_transition(_state(rule), rule.action, None, reason="because")


def test_the_handler_may_not_check_their_own_work() -> None:
    context = TransitionContext(actor_id=7, handler_ids=frozenset({7}))
    with pytest.raises(PermissionDenied) as caught:
        check_transition(IncidentState.HANDLED, Action.CHECK, Role.GRID_WORKER, context=context)
    assert caught.value.message_id == "command.error.checker_is_handler"


def test_someone_other_than_the_handler_may_check() -> None:
    context = TransitionContext(actor_id=8, handler_ids=frozenset({7}))
    rule = check_transition(IncidentState.HANDLED, Action.CHECK, Role.GRID_WORKER,
                            context=context)
    assert rule.to_state == IncidentState.CHECKED


def test_closing_needs_a_role_at_or_above_the_categorys_tier() -> None:
    street_only = TransitionContext(may_close_at=Tier.STREET)
    with pytest.raises(PermissionDenied):
        check_transition(IncidentState.CHECKED, Action.CLOSE, Role.GRID_WORKER,
                         context=street_only)
    with pytest.raises(PermissionDenied):
        check_transition(IncidentState.CHECKED, Action.CLOSE, Role.ZONE_RESPONDER,
                         context=street_only)
    assert check_transition(IncidentState.CHECKED, Action.CLOSE, Role.DISPATCHER,
                            context=street_only).to_state == IncidentState.CLOSED
    grid = TransitionContext(may_close_at=Tier.GRID)
    assert check_transition(IncidentState.CHECKED, Action.CLOSE, Role.GRID_WORKER, context=grid)


def test_only_a_district_department_may_close_what_only_the_district_may_close() -> None:
    district = TransitionContext(may_close_at=Tier.DISTRICT)
    for role in TRANSITIONS[Action.CLOSE].roles - {Role.DISTRICT_DEPARTMENT}:
        with pytest.raises(PermissionDenied) as refused:
            check_transition(IncidentState.CHECKED, Action.CLOSE, role, context=district)
        assert refused.value.message("zh_CN") == "该类事件须由区级或以上结案"
    assert check_transition(IncidentState.CHECKED, Action.CLOSE, Role.DISTRICT_DEPARTMENT,
                            context=district).action == Action.CLOSE


def test_handling_without_arriving_is_refused_when_the_category_needs_a_visit() -> None:
    with pytest.raises(Conflict):
        check_transition(IncidentState.ACCEPTED, Action.HANDLE, Role.ZONE_RESPONDER,
                         context=TransitionContext(on_scene_required=True))
    assert check_transition(IncidentState.ACCEPTED, Action.HANDLE, Role.ZONE_RESPONDER,
                            context=TransitionContext(on_scene_required=False))
    assert check_transition(IncidentState.ON_SCENE, Action.HANDLE, Role.ZONE_RESPONDER,
                            context=TransitionContext(on_scene_required=True))


def test_an_unknown_action_is_a_validation_error() -> None:
    with pytest.raises(ValidationFailed):
        check_transition(IncidentState.REGISTERED, "teleport", Role.DISPATCHER)


def test_resume_goes_back_and_reopen_needs_a_closed_incident() -> None:
    assert TRANSITIONS[Action.RESUME].restores_previous
    assert TRANSITIONS[Action.REOPEN].from_states == {IncidentState.CLOSED}
    assert TRANSITIONS[Action.REOPEN].to_state == IncidentState.REGISTERED


def test_supervise_and_extend_leave_the_state_alone() -> None:
    for action in (Action.SUPERVISE, Action.EXTEND, Action.KEEP_SEPARATE, Action.CALLBACK):
        assert TRANSITIONS[action].to_state is None


def test_every_open_state_has_a_way_out_and_every_target_is_a_state() -> None:
    sources = set().union(*(r.from_states for r in RULES))
    assert set(IncidentState) - TERMINAL_STATES <= sources | {IncidentState.RECEIVED}
    for rule in RULES:
        assert rule.to_state is None or rule.to_state in IncidentState


def test_the_main_line_runs_from_received_to_closed() -> None:
    state = IncidentState.RECEIVED
    line = [(Action.REGISTER, Role.DISPATCHER), (Action.DISPATCH, Role.DISPATCHER),
            (Action.ACCEPT, Role.ZONE_RESPONDER), (Action.ARRIVE, Role.ZONE_RESPONDER),
            (Action.HANDLE, Role.ZONE_RESPONDER), (Action.CHECK, Role.GRID_WORKER),
            (Action.CLOSE, Role.DISPATCHER)]
    for action, role in line:
        rule = check_transition(state, action, role)
        assert rule.to_state is not None
        state = rule.to_state
    assert state == IncidentState.CLOSED


def test_a_breach_goes_one_step_up_each_chain() -> None:
    chain = ESCALATION_CHAINS[DeadlineKind.FIRST_ON_SCENE]
    assert chain[0] == Audience.RESPONDER
    assert next_audience(DeadlineKind.FIRST_ON_SCENE, 0) == Audience.ZONE_LEADER
    assert next_audience(DeadlineKind.FIRST_ON_SCENE, 1) == Audience.COMMAND_CENTRE
    assert next_audience(DeadlineKind.FIRST_ON_SCENE, 2) == Audience.STREET_LEADER
    assert next_audience(DeadlineKind.FIRST_ON_SCENE, 3) is None
    assert has_next_deadline(DeadlineKind.FIRST_ON_SCENE, 1)
    assert not has_next_deadline(DeadlineKind.FIRST_ON_SCENE, 2)
    assert not has_next_deadline(DeadlineKind.DISPATCH, 0)
    assert breach_notice_level(0) == NoticeLevel.REMINDER
    assert breach_notice_level(1) == NoticeLevel.SUPERVISION
    assert breach_notice_level(5) == NoticeLevel.ESCALATION


def test_the_warning_comes_at_eighty_percent_of_the_span() -> None:
    start = datetime(2026, 3, 10, 1, 30, tzinfo=UTC)
    due = datetime(2026, 3, 10, 1, 35, tzinfo=UTC)
    assert warn_time(start, due) == datetime(2026, 3, 10, 1, 34, tzinfo=UTC)


class _Calendar:
    def add_working_hours(self, start: datetime, hours: int, /) -> datetime:
        return start.replace(year=2030, hour=hours)

    def add_working_days(self, start: datetime, days: int, /) -> datetime:
        return start.replace(year=2031, day=days)


def test_the_handling_limit_uses_the_calendar_for_working_units_only() -> None:
    start = datetime(2026, 3, 10, 1, 30, tzinfo=UTC)
    assert handling_due(4, LimitUnit.WORKING_HOURS, start, _Calendar()).year == 2030
    assert handling_due(3, LimitUnit.WORKING_DAYS, start, _Calendar()) == start.replace(
        year=2031, day=3)
    assert handling_due(2, "hours", start, _Calendar()) == datetime(2026, 3, 10, 3, 30,
                                                                     tzinfo=UTC)


def test_haversine_gives_about_111_km_per_degree_of_latitude() -> None:
    assert haversine_m(106.0, 29.0, 106.0, 30.0) == pytest.approx(111_195, rel=1e-3)
    assert haversine_m(106.0, 29.0, 106.0, 29.0) == 0


def test_phone_numbers_are_normalised_before_indexing() -> None:
    assert normalize_phone("+86 138-0013-8000") == "13800138000"
    assert normalize_phone("138 0013 8000") == "13800138000"
    assert normalize_phone("023-4567-8901") == "02345678901"
    with pytest.raises(ValidationFailed):
        normalize_phone("12")


def test_the_public_number_has_a_prefix_a_date_and_six_digits() -> None:
    assert format_number("20260310", 123) == "SF20260310-000123"


def test_every_message_id_used_by_the_command_loop_has_both_translations() -> None:
    used = set()
    for path in COMMAND_SRC.glob("*.py"):
        used |= set(re.findall(r'"(command\.(?:error|notice)\.[a-z_]+(?:\.[a-z_]+)?)"',
                               path.read_text(encoding="utf-8")))
    used |= {f"command.notice.{kind}.{what}" for kind in DeadlineKind
             for what in ("warning", "breached") if kind != DeadlineKind.TIER}
    # The tier clock speaks per step and per level instead (jobs._on_tier_breach).
    used |= {f"command.notice.tier.{step}" for step in TierBreach if step != TierBreach.ESCALATE}
    used |= {f"command.notice.tier.escalated.{tier}" for tier in Tier
             if tier != Tier.GRID}
    used |= {"command.notice.tier.warning", "command.reason.tier_limit_missed"}
    for language in ("en", "zh_CN"):
        catalogue = json.loads((COMMAND_SRC / "locales" / f"{language}.json")
                               .read_text(encoding="utf-8"))
        assert used - set(catalogue) == set(), language


@pytest.mark.parametrize("lat", [0.0, 29.3, 60.0])
@pytest.mark.parametrize("radius", [20, 50, 300])
def test_a_duplicate_probe_box_holds_every_point_within_the_radius(lat: float,
                                                                  radius: int) -> None:
    """The box narrows the database scan; the haversine distance decides. A point just inside
    the radius, due east, north, south or west, must fall inside the box."""
    from grassroots.command.models import IncidentCategory
    from grassroots.command.queries import DuplicateProbe

    category = IncidentCategory(id=1, duplicate_radius_m=radius, duplicate_window_min=60)
    probe = DuplicateProbe(category, 106.0, lat, datetime(2026, 3, 10, tzinfo=UTC))
    assert probe.box is not None
    _since, lon_lo, lon_hi, lat_lo, lat_hi = probe.box
    inside = radius - 0.001
    angle = inside / EARTH_RADIUS_M
    dlon = math.degrees(2 * math.asin(math.sin(angle / 2) / math.cos(math.radians(lat))))
    dlat = math.degrees(angle)
    for lon, at_lat in ((106.0 + dlon, lat), (106.0 - dlon, lat), (106.0, lat + dlat),
                        (106.0, lat - dlat)):
        assert haversine_m(106.0, lat, lon, at_lat) <= radius
        assert lon_lo <= lon <= lon_hi and lat_lo <= at_lat <= lat_hi
    # and the box is not much bigger than the circle
    assert lat_hi - lat < math.degrees(radius / EARTH_RADIUS_M) * 1.001
