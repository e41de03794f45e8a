"""Roles and what each may do. Permissions are data so a test can check every one is documented."""

from __future__ import annotations

import enum


class Role(enum.StrEnum):
    SYSTEM_ADMIN = "system_admin"
    SECURITY_ADMIN = "security_admin"
    AUDIT_ADMIN = "audit_admin"
    STREET_LEADER = "street_leader"
    DISPATCHER = "dispatcher"
    ZONE_LEADER = "zone_leader"
    ZONE_RESPONDER = "zone_responder"
    GRID_WORKER = "grid_worker"
    BUILDING_HEAD = "building_head"
    MEDIATOR = "mediator"
    PARTY_SECRETARY = "party_secretary"
    OWNERS_COMMITTEE = "owners_committee"
    IRRIGATION_DISPATCHER = "irrigation_dispatcher"
    GATE_OPERATOR = "gate_operator"
    DISTRICT_DEPARTMENT = "district_department"
    VIEWER = "viewer"


# 三员分立 (MLPS level 3): system, security and audit administration are held by separate roles.
ADMIN_ROLES = frozenset({Role.SYSTEM_ADMIN, Role.SECURITY_ADMIN, Role.AUDIT_ADMIN})


class Permission(enum.StrEnum):
    USERS_MANAGE = "users.manage"
    ROLES_ASSIGN = "roles.assign"
    AUDIT_READ = "audit.read"
    REGIONS_READ = "regions.read"
    REGIONS_EDIT = "regions.edit"
    SETTINGS_EDIT = "settings.edit"
    PERSONAL_DATA_UNMASK = "personal_data.unmask"
    API_TOKENS_MANAGE = "api_tokens.manage"
    INCIDENTS_READ = "incidents.read"
    INCIDENTS_REPORT = "incidents.report"
    INCIDENTS_DISPATCH = "incidents.dispatch"
    INCIDENTS_HANDLE = "incidents.handle"
    INCIDENTS_SUPERVISE = "incidents.supervise"
    CATEGORIES_EDIT = "categories.edit"
    MEDIATION_HANDLE = "mediation.handle"
    DELIBERATION_MANAGE = "deliberation.manage"
    PARTY_POINTS_MANAGE = "party.points.manage"
    IRRIGATION_READ = "irrigation.read"
    IRRIGATION_DISPATCH = "irrigation.dispatch"
    GATES_OPERATE = "gates.operate"


P = Permission
_READ_GOV = {P.REGIONS_READ, P.INCIDENTS_READ}

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    # The system admin runs the platform but neither grants roles nor reads the audit trail.
    Role.SYSTEM_ADMIN: frozenset({P.USERS_MANAGE, P.REGIONS_READ, P.REGIONS_EDIT, P.SETTINGS_EDIT,
                                  P.CATEGORIES_EDIT}),
    Role.SECURITY_ADMIN: frozenset({P.ROLES_ASSIGN, P.API_TOKENS_MANAGE, P.REGIONS_READ}),
    Role.AUDIT_ADMIN: frozenset({P.AUDIT_READ, P.REGIONS_READ}),
    Role.STREET_LEADER: frozenset(_READ_GOV | {P.INCIDENTS_SUPERVISE, P.IRRIGATION_READ,
                                                P.PERSONAL_DATA_UNMASK}),
    Role.DISPATCHER: frozenset(_READ_GOV | {P.INCIDENTS_REPORT, P.INCIDENTS_DISPATCH,
                                             P.INCIDENTS_SUPERVISE, P.PERSONAL_DATA_UNMASK}),
    # A zone's leader (片区长): hears of the zone's missed limits, supervises, checks and closes
    # at the zone's tier; the zone team's responders do the field work.
    Role.ZONE_LEADER: frozenset(_READ_GOV | {P.INCIDENTS_REPORT, P.INCIDENTS_SUPERVISE,
                                              P.PERSONAL_DATA_UNMASK}),
    Role.ZONE_RESPONDER: frozenset(_READ_GOV | {P.INCIDENTS_REPORT, P.INCIDENTS_HANDLE}),
    Role.GRID_WORKER: frozenset(_READ_GOV | {P.INCIDENTS_REPORT, P.INCIDENTS_HANDLE}),
    Role.BUILDING_HEAD: frozenset(_READ_GOV | {P.INCIDENTS_REPORT}),
    Role.MEDIATOR: frozenset(_READ_GOV | {P.MEDIATION_HANDLE}),
    Role.PARTY_SECRETARY: frozenset(_READ_GOV | {P.PARTY_POINTS_MANAGE}),
    Role.OWNERS_COMMITTEE: frozenset({P.REGIONS_READ, P.DELIBERATION_MANAGE}),
    Role.IRRIGATION_DISPATCHER: frozenset({P.REGIONS_READ, P.IRRIGATION_READ,
                                           P.IRRIGATION_DISPATCH, P.GATES_OPERATE}),
    Role.GATE_OPERATOR: frozenset({P.REGIONS_READ, P.IRRIGATION_READ, P.GATES_OPERATE}),
    Role.VIEWER: frozenset({P.REGIONS_READ, P.INCIDENTS_READ, P.IRRIGATION_READ}),
    # An officer of a district department (区级部门): takes the orders escalated to the district.
    Role.DISTRICT_DEPARTMENT: frozenset(_READ_GOV | {P.INCIDENTS_HANDLE}),
}


def has_permission(role: Role, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS[role]
