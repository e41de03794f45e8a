"""The incident state machine and the command loop's rules, as data; nothing here touches the DB.

Sources: GB/T 30428 (digital urban management workflow), 12345 hotline practice and the
NFPA 1710 dispatch measures, as summarised in docs/DOMAIN.md §2. Numbers marked *default* are
our own and stay editable by a deployment.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from grassroots.kernel.auth.roles import Role
from grassroots.kernel.errors import Conflict, PermissionDenied, ValidationFailed
from grassroots.kernel.i18n import Term


class IncidentState(enum.StrEnum):
    RECEIVED = "received"
    REGISTERED = "registered"
    DISPATCHED = "dispatched"
    ACCEPTED = "accepted"
    ON_SCENE = "on_scene"
    HANDLED = "handled"
    CHECKED = "checked"
    CLOSED = "closed"
    SUSPENDED = "suspended"
    VOIDED = "voided"
    SENT_BACK = "sent_back"


S = IncidentState
TERMINAL_STATES = frozenset({S.CLOSED, S.VOIDED})
OPEN_STATES = frozenset(set(S) - TERMINAL_STATES)


class Action(enum.StrEnum):
    REGISTER = "register"
    DISPATCH = "dispatch"
    ACCEPT = "accept"
    ARRIVE = "arrive"
    REQUEST_REINFORCEMENT = "request_reinforcement"
    REINFORCEMENT_ARRIVED = "reinforcement_arrived"
    HANDLE = "handle"
    CHECK = "check"
    CLOSE = "close"
    CALLBACK = "callback"
    EXTEND = "extend"
    SEND_BACK = "send_back"
    VOID = "void"
    MERGE = "merge"
    KEEP_SEPARATE = "keep_separate"
    SUSPEND = "suspend"
    RESUME = "resume"
    SUPERVISE = "supervise"
    ESCALATE = "escalate"  # 升级: up one tier, by a missed tier limit or by the centre
    REOPEN = "reopen"


class Channel(enum.StrEnum):
    API = "api"
    OPEN311 = "open311"
    PHONE = "phone"
    POLICE_110 = "police_110"
    GRID_WORKER = "grid_worker"
    DOOR_PLATE = "door_plate"
    IRRIGATION = "irrigation"
    MEDIATION = "mediation"
    INTERNAL = "internal"


class Tier(enum.StrEnum):
    """Tiered handling (分级诊疗): solve at the lowest level that can."""

    GRID = "grid"
    ZONE = "zone"
    STREET = "street"
    DISTRICT = "district"


TIER_ORDER: dict[Tier, int] = {tier: rank for rank, tier in enumerate(Tier)}


class UnitType(enum.StrEnum):
    ZONE_TEAM = "zone_team"
    LAW_ENFORCEMENT = "law_enforcement"
    PROPERTY_MANAGEMENT = "property_management"
    MEDIATION = "mediation"
    POLICE = "police"
    DISTRICT_DEPARTMENT = "district_department"
    IRRIGATION_OFFICE = "irrigation_office"


# The tier an incident starts at, from the unit that handles it (*default*).
UNIT_TIER: dict[UnitType, Tier] = {
    UnitType.ZONE_TEAM: Tier.ZONE,
    UnitType.LAW_ENFORCEMENT: Tier.STREET,
    UnitType.PROPERTY_MANAGEMENT: Tier.GRID,
    UnitType.MEDIATION: Tier.ZONE,
    UnitType.POLICE: Tier.STREET,
    UnitType.DISTRICT_DEPARTMENT: Tier.DISTRICT,
    UnitType.IRRIGATION_OFFICE: Tier.STREET,
}

# The highest tier each role acts for, for "may close at" checks.
ROLE_TIER: dict[Role, Tier] = {
    Role.GRID_WORKER: Tier.GRID,
    Role.ZONE_RESPONDER: Tier.ZONE,
    Role.ZONE_LEADER: Tier.ZONE,
    Role.DISPATCHER: Tier.STREET,
    Role.STREET_LEADER: Tier.STREET,
    Role.DISTRICT_DEPARTMENT: Tier.DISTRICT,
}


def next_tier(tier: Tier) -> Tier | None:
    """The level an unsolved incident goes up to; None at the top (the district)."""
    order = list(Tier)
    rank = TIER_ORDER[tier]
    return order[rank + 1] if rank + 1 < len(order) else None


def higher_tier(a: Tier, b: Tier) -> Tier:
    return a if TIER_ORDER[a] >= TIER_ORDER[b] else b


class LimitUnit(enum.StrEnum):
    WORKING_HOURS = "working_hours"
    WORKING_DAYS = "working_days"
    HOURS = "hours"


# 分级诊疗: each level has its own limit, from when the incident reaches it (*default*). The
# category's handling limit caps it, so an urgent case never sits longer at one level than it
# may take in all. The district is the top: nobody above it to pass to.
TIER_LIMITS: dict[Tier, tuple[int, LimitUnit] | None] = {
    Tier.GRID: (1, LimitUnit.WORKING_DAYS),
    Tier.ZONE: (2, LimitUnit.WORKING_DAYS),
    Tier.STREET: (3, LimitUnit.WORKING_DAYS),
    Tier.DISTRICT: None,
}


class AttributeType(enum.StrEnum):
    """Open311 GeoReport v2 attribute datatypes."""

    STRING = "string"
    NUMBER = "number"
    DATETIME = "datetime"
    TEXT = "text"
    SINGLEVALUELIST = "singlevaluelist"
    MULTIVALUELIST = "multivaluelist"


class ResponseRole(enum.StrEnum):
    FIRST_RESPONDER = "first_responder"
    REINFORCEMENT = "reinforcement"
    HANDLER = "handler"
    CHECKER = "checker"


class ResponderState(enum.StrEnum):
    AVAILABLE = "available"
    BUSY = "busy"
    OFF = "off"


class DeadlineKind(enum.StrEnum):
    DISPATCH = "dispatch"
    FIRST_ON_SCENE = "first_on_scene"
    REINFORCEMENT = "reinforcement"
    HANDLING = "handling"
    CALLBACK = "callback"
    TIER = "tier"


class DeadlineLevel(enum.StrEnum):
    NONE = "none"
    WARNED = "warned"
    BREACHED = "breached"


class DeadlineState(enum.StrEnum):
    OPEN = "open"
    MET = "met"
    BREACHED_HANDLED = "breached_handled"
    CANCELLED = "cancelled"
    PAUSED = "paused"  # while the incident is suspended (挂账); resume re-opens it


class Audience(enum.StrEnum):
    """Who a notice goes to, along the escalation chain."""

    RESPONDER = "responder"
    GRID = "grid"
    ZONE_LEADER = "zone_leader"
    COMMAND_CENTRE = "command_centre"
    STREET_LEADER = "street_leader"
    DISTRICT = "district"


# The role a notice to each audience is addressed to (within the incident's region: a zone
# leader hears of their own zone's incidents only).
AUDIENCE_ROLE: dict[Audience, Role] = {
    Audience.RESPONDER: Role.ZONE_RESPONDER,
    Audience.GRID: Role.GRID_WORKER,
    Audience.ZONE_LEADER: Role.ZONE_LEADER,
    Audience.COMMAND_CENTRE: Role.DISPATCHER,
    Audience.STREET_LEADER: Role.STREET_LEADER,
    Audience.DISTRICT: Role.DISTRICT_DEPARTMENT,
}

# Who answers for an incident at each tier, and so hears about its tier limit.
TIER_AUDIENCE: dict[Tier, Audience] = {
    Tier.GRID: Audience.GRID,
    Tier.ZONE: Audience.ZONE_LEADER,
    Tier.STREET: Audience.COMMAND_CENTRE,
    Tier.DISTRICT: Audience.DISTRICT,
}


class NoticeLevel(enum.StrEnum):
    WARNING = "warning"  # the limit is close
    REMINDER = "reminder"  # first breach (催办)
    SUPERVISION = "supervision"  # second breach, or a person's 督办
    ESCALATION = "escalation"  # handed to the top of the chain


# --- clocks (docs/DOMAIN.md §2) ---------------------------------------------------------------

CALL_PROCESSING_LIMIT = timedelta(seconds=60)  # dispatched − received
FIRST_RESPONSE_LIMIT = timedelta(minutes=5)  # first responder on scene − dispatched
EFFECTIVE_RESPONSE_LIMIT = timedelta(minutes=15)  # reinforcements on scene − requested
CALLBACK_WORKING_DAYS = 1  # callback the next working day
SEND_BACK_WORKING_DAYS = 2  # a unit may send an order back within 2 working days of dispatch
EXTENSION_MAX_WORKING_DAYS = 10  # extensions, all together
WARN_FRACTION = 0.8  # *default*: warn when 80% of the span has gone
SWEEP_INTERVAL = timedelta(seconds=10)  # *default*: how often a sweeper worker wakes
# A position older than this says nothing about where the responder is now (*default*).
POSITION_STALE_AFTER = timedelta(minutes=30)
DESCRIPTION_MAX_CHARS = 4000  # Open311 GeoReport v2

# *default*: how many first responders an incident of each urgency gets.
FIRST_RESPONDERS_BY_URGENCY: dict[int, int] = {1: 2, 2: 1, 3: 1, 4: 1}
REINFORCEMENTS_PER_REQUEST = 1  # *default*

# Each kind of clock escalates along its own chain; step 0 owns the first limit, and a breach at
# step n notifies chain[n + 1] and gives it the next interval (*default* intervals).
ESCALATION_CHAINS: dict[DeadlineKind, tuple[Audience, ...]] = {
    DeadlineKind.DISPATCH: (Audience.COMMAND_CENTRE, Audience.STREET_LEADER),
    DeadlineKind.FIRST_ON_SCENE: (Audience.RESPONDER, Audience.ZONE_LEADER,
                                  Audience.COMMAND_CENTRE, Audience.STREET_LEADER),
    DeadlineKind.REINFORCEMENT: (Audience.RESPONDER, Audience.ZONE_LEADER,
                                 Audience.COMMAND_CENTRE, Audience.STREET_LEADER),
    DeadlineKind.HANDLING: (Audience.RESPONDER, Audience.ZONE_LEADER, Audience.COMMAND_CENTRE,
                            Audience.STREET_LEADER),
    DeadlineKind.CALLBACK: (Audience.COMMAND_CENTRE, Audience.STREET_LEADER),
    # The tier clock's chain is per level (TIER_AUDIENCE), see tier_breach below; this entry
    # only sizes it: reminder, supervision, then the next level.
    DeadlineKind.TIER: (Audience.ZONE_LEADER, Audience.COMMAND_CENTRE, Audience.STREET_LEADER),
}
ESCALATION_INTERVAL: dict[DeadlineKind, timedelta] = {
    DeadlineKind.DISPATCH: timedelta(minutes=2),
    DeadlineKind.FIRST_ON_SCENE: timedelta(minutes=5),
    DeadlineKind.REINFORCEMENT: timedelta(minutes=15),
    DeadlineKind.HANDLING: timedelta(hours=4),
    DeadlineKind.CALLBACK: timedelta(hours=4),
    DeadlineKind.TIER: timedelta(hours=4),
}
# The notice a breach at step n sends up the chain.
BREACH_NOTICE_LEVELS = (NoticeLevel.REMINDER, NoticeLevel.SUPERVISION, NoticeLevel.ESCALATION)

# While the incident is in one of these states the clock still means something; otherwise the
# sweeper cancels it instead of escalating.
DEADLINE_ACTIVE_STATES: dict[DeadlineKind, frozenset[IncidentState]] = {
    DeadlineKind.DISPATCH: frozenset({S.RECEIVED, S.REGISTERED, S.SENT_BACK}),
    DeadlineKind.FIRST_ON_SCENE: frozenset({S.DISPATCHED, S.ACCEPTED}),
    DeadlineKind.REINFORCEMENT: frozenset({S.DISPATCHED, S.ACCEPTED, S.ON_SCENE}),
    DeadlineKind.HANDLING: frozenset({S.DISPATCHED, S.ACCEPTED, S.ON_SCENE}),
    DeadlineKind.CALLBACK: frozenset({S.CLOSED}),
    DeadlineKind.TIER: frozenset({S.REGISTERED, S.SENT_BACK, S.DISPATCHED, S.ACCEPTED,
                                  S.ON_SCENE}),
}


class TierBreach(enum.StrEnum):
    """What a missed tier limit does at each step (DOMAIN.md §2: reminder → supervision → up)."""

    REMIND = "remind"  # 催办 to the level that holds it
    SUPERVISE = "supervise"  # 督办 by the level above
    ESCALATE = "escalate"  # handed to the level above, with that level's own limit


TIER_BREACH_STEPS = (TierBreach.REMIND, TierBreach.SUPERVISE, TierBreach.ESCALATE)
TIER_GRACE = timedelta(hours=4)  # *default*: between reminder, supervision and escalation


def tier_breach(step: int) -> TierBreach:
    return TIER_BREACH_STEPS[min(step, len(TIER_BREACH_STEPS) - 1)]


def breach_notice_level(step: int) -> NoticeLevel:
    return BREACH_NOTICE_LEVELS[min(step, len(BREACH_NOTICE_LEVELS) - 1)]


def next_audience(kind: DeadlineKind, step: int) -> Audience | None:
    """Who hears about a breach at `step`; None when the chain has nobody higher."""
    chain = ESCALATION_CHAINS[kind]
    return chain[step + 1] if step + 1 < len(chain) else None


def has_next_deadline(kind: DeadlineKind, step: int) -> bool:
    """Whether a breach at `step` hands a new limit to someone who can still escalate it."""
    return step + 2 < len(ESCALATION_CHAINS[kind])


# --- what each action does to the clocks and timestamps ----------------------------------------

# Settled when the action happens: (kinds, the state they end in). Everything not named runs on.
_ALL_KINDS = frozenset(DeadlineKind)
DEADLINE_EFFECTS: dict[Action, tuple[tuple[frozenset[DeadlineKind], DeadlineState], ...]] = {
    Action.DISPATCH: ((frozenset({DeadlineKind.DISPATCH}), DeadlineState.MET),
                      (frozenset({DeadlineKind.FIRST_ON_SCENE}), DeadlineState.CANCELLED)),
    Action.ARRIVE: ((frozenset({DeadlineKind.FIRST_ON_SCENE}), DeadlineState.MET),),
    Action.HANDLE: ((frozenset({DeadlineKind.HANDLING, DeadlineKind.TIER}), DeadlineState.MET),
                    (frozenset({DeadlineKind.FIRST_ON_SCENE, DeadlineKind.REINFORCEMENT}),
                     DeadlineState.CANCELLED)),
    Action.CLOSE: ((_ALL_KINDS, DeadlineState.CANCELLED),),
    Action.CALLBACK: ((frozenset({DeadlineKind.CALLBACK}), DeadlineState.MET),),
    Action.SEND_BACK: ((frozenset({DeadlineKind.FIRST_ON_SCENE, DeadlineKind.REINFORCEMENT,
                                   DeadlineKind.HANDLING}), DeadlineState.CANCELLED),),
    Action.VOID: ((_ALL_KINDS, DeadlineState.CANCELLED),),
    Action.MERGE: ((_ALL_KINDS, DeadlineState.CANCELLED),),
    Action.REOPEN: ((frozenset({DeadlineKind.CALLBACK}), DeadlineState.CANCELLED),),
    # The level below's clock stops; the action starts the next level's.
    Action.ESCALATE: ((frozenset({DeadlineKind.TIER}), DeadlineState.CANCELLED),),
}

# The incident timestamp an action stamps: (column, first time only). The response clocks keep
# the first time (a re-dispatch does not reset call processing); handling and closing take the
# latest, so a reopened incident reports when it was finally done.
TIMESTAMPS: dict[Action, tuple[str, bool]] = {
    Action.REGISTER: ("registered_at", True),
    Action.DISPATCH: ("dispatched_at", True),
    Action.ARRIVE: ("first_on_scene_at", True),
    Action.HANDLE: ("handled_at", False),
    Action.CLOSE: ("closed_at", False),
}

# Roles that keep a person out on the street; only these make a responder busy.
FIELD_ROLES = frozenset({ResponseRole.FIRST_RESPONDER, ResponseRole.REINFORCEMENT})

# Assignments an action ends; a responder left with no field assignment goes available again.
# A suspension keeps them: resuming returns the incident to the same people.
RELEASES: dict[Action, frozenset[ResponseRole]] = {
    Action.DISPATCH: frozenset({ResponseRole.FIRST_RESPONDER}),  # a re-dispatch replaces them
    Action.HANDLE: FIELD_ROLES,
    Action.SEND_BACK: FIELD_ROLES,
    Action.VOID: frozenset(ResponseRole),
    Action.MERGE: frozenset(ResponseRole),
    Action.CLOSE: frozenset(ResponseRole),
}


# --- the transition table ----------------------------------------------------------------------

# A district department's officers take the orders passed up to them like any responder.
_RESPONDERS = frozenset({Role.ZONE_RESPONDER, Role.GRID_WORKER, Role.DISTRICT_DEPARTMENT})
_CENTRE = frozenset({Role.DISPATCHER, Role.STREET_LEADER})
# People who act on an incident only once it is sent to them (actions._require_assigned).
FIELD_RESPONDER_ROLES = _RESPONDERS
_CHECKERS = frozenset({Role.DISPATCHER, Role.STREET_LEADER, Role.GRID_WORKER,
                       Role.ZONE_RESPONDER, Role.ZONE_LEADER, Role.DISTRICT_DEPARTMENT})
# Who may supervise (督办): the centre, and a zone's leader for the zone's incidents.
_SUPERVISORS = _CENTRE | {Role.ZONE_LEADER}


@dataclass(frozen=True)
class TransitionRule:
    """One row of the table. to_state None means the action leaves the state as it is."""

    action: Action
    from_states: frozenset[IncidentState]
    to_state: IncidentState | None
    roles: frozenset[Role]
    reason_required: bool = False
    system: bool = False  # the platform itself may take it by rule (intake's auto-dispatch)
    restores_previous: bool = False  # resume goes back to the state before the suspension
    distinct_from_handler: bool = False  # 核查 by someone other than the handler
    tier_limited: bool = False  # only roles at or above the category's "may close at" tier
    site_visit_guard: bool = False  # refused from ACCEPTED when the category needs a visit


def _rule(action: Action, from_states: Collection[IncidentState], to_state: IncidentState | None,
          roles: Collection[Role], **flags: bool) -> TransitionRule:
    return TransitionRule(action, frozenset(from_states), to_state, frozenset(roles), **flags)


TRANSITIONS: dict[Action, TransitionRule] = {rule.action: rule for rule in (
    _rule(Action.REGISTER, {S.RECEIVED}, S.REGISTERED, _CENTRE, system=True),
    _rule(Action.DISPATCH, {S.REGISTERED, S.SENT_BACK, S.DISPATCHED}, S.DISPATCHED, _CENTRE,
          system=True),
    _rule(Action.ACCEPT, {S.DISPATCHED}, S.ACCEPTED, _RESPONDERS),
    _rule(Action.ARRIVE, {S.DISPATCHED, S.ACCEPTED}, S.ON_SCENE, _RESPONDERS),
    _rule(Action.REQUEST_REINFORCEMENT, {S.ACCEPTED, S.ON_SCENE}, None,
          _RESPONDERS | {Role.DISPATCHER}),
    _rule(Action.REINFORCEMENT_ARRIVED, {S.ACCEPTED, S.ON_SCENE}, None,
          _RESPONDERS | {Role.DISPATCHER}),
    _rule(Action.HANDLE, {S.ACCEPTED, S.ON_SCENE}, S.HANDLED, _RESPONDERS,
          site_visit_guard=True),
    _rule(Action.CHECK, {S.HANDLED}, S.CHECKED, _CHECKERS, distinct_from_handler=True),
    _rule(Action.CLOSE, {S.CHECKED}, S.CLOSED, _CHECKERS, tier_limited=True),
    _rule(Action.CALLBACK, {S.CLOSED}, None, {Role.DISPATCHER}),
    _rule(Action.EXTEND, {S.DISPATCHED, S.ACCEPTED, S.ON_SCENE}, None, _CENTRE,
          reason_required=True),
    _rule(Action.SEND_BACK, {S.DISPATCHED, S.ACCEPTED}, S.SENT_BACK,
          _RESPONDERS | {Role.DISPATCHER}, reason_required=True),
    _rule(Action.VOID, {S.RECEIVED, S.REGISTERED, S.SENT_BACK, S.DISPATCHED}, S.VOIDED, _CENTRE,
          reason_required=True),
    _rule(Action.MERGE, {S.RECEIVED, S.REGISTERED, S.SENT_BACK, S.DISPATCHED, S.ACCEPTED},
          S.VOIDED, _CENTRE),
    _rule(Action.KEEP_SEPARATE, OPEN_STATES, None, _CENTRE),
    _rule(Action.SUSPEND, {S.REGISTERED, S.SENT_BACK, S.DISPATCHED, S.ACCEPTED, S.ON_SCENE},
          S.SUSPENDED, _CENTRE, reason_required=True),
    _rule(Action.RESUME, {S.SUSPENDED}, None, _CENTRE, reason_required=True,
          restores_previous=True),
    _rule(Action.SUPERVISE, OPEN_STATES, None, _SUPERVISORS, reason_required=True),
    _rule(Action.REOPEN, {S.CLOSED}, S.REGISTERED, _CENTRE, reason_required=True),
    _rule(Action.ESCALATE, {S.REGISTERED, S.SENT_BACK, S.DISPATCHED, S.ACCEPTED, S.ON_SCENE},
          None, _CENTRE, reason_required=True, system=True),
)}


@dataclass(frozen=True)
class TransitionContext:
    """Facts about the incident that some rules need; the action reads them from the database."""

    actor_id: int | None = None
    handler_ids: frozenset[int] = field(default_factory=frozenset)
    may_close_at: Tier | None = None
    on_scene_required: bool = True


def _guard_role(rule: TransitionRule, role: Role | None) -> None:
    allowed = rule.system if role is None else role in rule.roles
    if not allowed:
        raise PermissionDenied("command.error.role_not_allowed",
                               action=Term(f"command.action.{rule.action}"),
                               role=Term(f"role.{role}") if role else "system")


def _guard_state(rule: TransitionRule, state: IncidentState) -> None:
    if state not in rule.from_states:
        raise Conflict("command.error.wrong_state", action=Term(f"command.action.{rule.action}"),
                       state=Term(f"command.state.{state}"))


def _guard_reason(rule: TransitionRule, reason: str | None) -> None:
    if rule.reason_required and not (reason and reason.strip()):
        raise ValidationFailed("command.error.reason_required",
                               action=Term(f"command.action.{rule.action}"))


def _guard_checker(rule: TransitionRule, ctx: TransitionContext) -> None:
    if rule.distinct_from_handler and ctx.actor_id is not None and (
            ctx.actor_id in ctx.handler_ids):
        raise PermissionDenied("command.error.checker_is_handler")


def _guard_tier(rule: TransitionRule, role: Role | None, ctx: TransitionContext) -> None:
    if not rule.tier_limited or role is None or ctx.may_close_at is None:
        return
    tier = ROLE_TIER.get(role)
    if tier is None or TIER_ORDER[tier] < TIER_ORDER[ctx.may_close_at]:
        raise PermissionDenied("command.error.tier_too_low",
                               tier=Term(f"command.tier.{ctx.may_close_at}"))


def _guard_site_visit(rule: TransitionRule, state: IncidentState, ctx: TransitionContext) -> None:
    if rule.site_visit_guard and ctx.on_scene_required and state == S.ACCEPTED:
        raise Conflict("command.error.site_visit_required")


def check_transition(state: IncidentState | str, action: Action | str, role: Role | None, *,
                     reason: str | None = None,
                     context: TransitionContext | None = None) -> TransitionRule:
    """The rule that allows `role` (None: the platform itself) to take `action` now, or an error.

    Wrong role → PermissionDenied; wrong state → Conflict; a missing reason → ValidationFailed;
    a handler checking their own work, or a closer below the category's tier → PermissionDenied.
    """
    try:
        rule = TRANSITIONS[Action(action)]
    except ValueError:
        raise ValidationFailed("command.error.unknown_action", action=action) from None
    ctx = context or TransitionContext()
    current = IncidentState(state)
    _guard_role(rule, role)
    _guard_state(rule, current)
    _guard_reason(rule, reason)
    _guard_checker(rule, ctx)
    _guard_tier(rule, role, ctx)
    _guard_site_visit(rule, current, ctx)
    return rule


# --- actors ------------------------------------------------------------------------------------


class Actor(Protocol):
    """Who acts: a signed-in User, or a SystemActor for the platform's own processes."""

    @property
    def id(self) -> int | None: ...

    @property
    def username(self) -> str: ...

    @property
    def role(self) -> Role | None: ...


@dataclass(frozen=True)
class SystemActor:
    """A platform process (an irrigation alarm, the sweeper) acting by rule, not as a person."""

    username: str
    id: None = None
    role: None = None


@dataclass(frozen=True)
class PersonActor:
    """A signed-in person as plain values, for work another thread does on their behalf (a
    User belongs to its request's session)."""

    id: int | None
    username: str
    role: Role | None

    @classmethod
    def of(cls, actor: Actor) -> PersonActor:
        return cls(actor.id, actor.username, actor.role)


SWEEPER = SystemActor("system:sweeper")
AUTO_DISPATCH = SystemActor("system:auto-dispatch")


# --- geometry ----------------------------------------------------------------------------------

EARTH_RADIUS_M = 6_371_008.8  # IUGG mean radius


def haversine_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Great-circle distance in metres between two WGS-84 points."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(a))


def warn_time(start: datetime, due: datetime) -> datetime:
    """The moment WARN_FRACTION of the span from start to due has gone."""
    return start + (due - start) * WARN_FRACTION


# --- protocols for pieces other modules provide ------------------------------------------------


class WorkingCalendar(Protocol):
    """What the loop needs of kernel.calendar's WorkingCalendar (official holidays, 调休)."""

    def add_working_hours(self, start: datetime, hours: int, /) -> datetime: ...

    def add_working_days(self, start: datetime, days: int, /) -> datetime: ...


class RegionRef(Protocol):
    """A region as a locator returns it; kernel.regions.models.Region fits."""

    @property
    def id(self) -> int: ...

    @property
    def level(self) -> str: ...

    @property
    def path(self) -> str: ...


# Returns the regions containing a point, deepest first; None or [] outside every region.
Locator = Callable[[float, float], Sequence[RegionRef] | None]


_LIMIT_DUE: dict[LimitUnit, Callable[[WorkingCalendar, datetime, int], datetime]] = {
    LimitUnit.WORKING_HOURS: lambda cal, start, n: cal.add_working_hours(start, n),
    LimitUnit.WORKING_DAYS: lambda cal, start, n: cal.add_working_days(start, n),
    LimitUnit.HOURS: lambda _cal, start, n: start + timedelta(hours=n),
}


def handling_due(value: int, unit: LimitUnit | str, start: datetime,
                 calendar: WorkingCalendar) -> datetime:
    """When a category's handling limit runs out, counted from `start`."""
    return _LIMIT_DUE[LimitUnit(unit)](calendar, start, value)


def tier_due(tier: Tier, start: datetime, calendar: WorkingCalendar, *,
             handling_value: int, handling_unit: LimitUnit | str) -> datetime | None:
    """When the level `tier` must have solved it (its own limit, capped by the category's)."""
    limit = TIER_LIMITS[tier]
    if limit is None:
        return None
    own = handling_due(limit[0], limit[1], start, calendar)
    return min(own, handling_due(handling_value, handling_unit, start, calendar))


NUMBER_PREFIX = "SF"  # *default*: Shuangfu; the public number is SF + Beijing date + daily count


def format_number(day: str, sequence: int) -> str:
    return f"{NUMBER_PREFIX}{day}-{sequence:06d}"


def normalize_phone(phone: str) -> str:
    """Digits only, without the +86 country prefix, so one number has one blind index."""
    digits = "".join(ch for ch in phone if ch.isdigit())
    if digits.startswith("86") and len(digits) == 13:
        digits = digits[2:]
    if not 5 <= len(digits) <= 15:
        raise ValidationFailed("command.error.bad_phone")
    return digits
