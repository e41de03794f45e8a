"""Open311 API keys: issued and revoked by security administrators, stored only as hashes."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import sqlalchemy as sa
from tests.integration.command_support import A_LAT, A_LON, make_user
from tests.web.open311_support import (
    Open311,
    assert_spec_error,
    o311_fixture,  # noqa: F401
)

from grassroots.command.open311 import DEMO_CLIENT_NAME, DEMO_KEY
from grassroots.command.open311.keys import (
    client_for_key,
    ensure_demo_key,
    hash_key,
    issue_open311_key,
    revoke_open311_key,
)
from grassroots.command.open311.models import Open311Client
from grassroots.command.states import SystemActor
from grassroots.kernel.audit.chain import verify_chain
from grassroots.kernel.audit.models import AuditRow
from grassroots.kernel.auth.actions import create_api_token
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Role
from grassroots.kernel.errors import Conflict, PermissionDenied, ValidationFailed
from grassroots.settings import Environment

CLIENTS = "/api/v1/open311/clients"


def _bearer(o311: Open311, role: Role) -> dict[str, str]:
    user = make_user(o311.session, role)
    o311.session.commit()
    _token, plaintext = create_api_token(session=o311.session, runtime=o311.runtime,
                                         actor="cli", name="test", user_id=user.id)
    return {"Authorization": f"Bearer {plaintext}"}


def _admin(o311: Open311) -> User:
    user = make_user(o311.session, Role.SECURITY_ADMIN, name="sec-admin")
    o311.session.commit()
    return user


def test_a_security_admin_issues_a_key_that_is_stored_only_as_its_hash(o311: Open311) -> None:
    admin = _admin(o311)
    client, key = issue_open311_key(session=o311.session, runtime=o311.runtime, actor=admin,
                                    client_name=" FixMyStreet 重庆 ")
    assert key.startswith("o311_") and len(key) > 40
    row = o311.session.scalars(sa.select(Open311Client)).one()
    assert row.name == "FixMyStreet 重庆"
    assert row.key_hash == hash_key(key) and key not in row.key_hash
    assert row.key_prefix == key[:12] and row.created_by == "sec-admin"
    assert client_for_key(session=o311.session, key=key) == client
    audit = o311.session.scalars(sa.select(AuditRow).where(
        AuditRow.action == "open311_client:issue")).one()
    assert audit.actor == "sec-admin" and key not in audit.detail
    assert verify_chain(session=o311.session, runtime=o311.runtime).ok


def test_revoking_a_key_is_audited_and_stops_it_at_once(o311: Open311) -> None:
    admin = _admin(o311)
    client, key = issue_open311_key(session=o311.session, runtime=o311.runtime, actor=admin,
                                    client_name="app")
    revoked = revoke_open311_key(session=o311.session, runtime=o311.runtime, actor=admin,
                                 client_id=client.id)
    assert revoked.revoked_at == o311.runtime.clock.now()
    assert client_for_key(session=o311.session, key=key) is None
    again = revoke_open311_key(session=o311.session, runtime=o311.runtime, actor=admin,
                               client_id=client.id)
    assert again.revoked_at == revoked.revoked_at
    actions = o311.session.scalars(sa.select(AuditRow.action)).all()
    assert actions.count("open311_client:revoke") == 1


@pytest.mark.parametrize("role", [Role.DISPATCHER, Role.SYSTEM_ADMIN, Role.VIEWER])
def test_only_key_managers_may_issue_keys(o311: Open311, role: Role) -> None:
    user = make_user(o311.session, role)
    o311.session.commit()
    with pytest.raises(PermissionDenied):
        issue_open311_key(session=o311.session, runtime=o311.runtime, actor=user,
                          client_name="app")


def test_a_name_is_unique_among_live_clients_and_free_again_after_revoking(
        o311: Open311) -> None:
    admin = _admin(o311)
    first, _key = issue_open311_key(session=o311.session, runtime=o311.runtime, actor=admin,
                                    client_name="app")
    with pytest.raises(Conflict):
        issue_open311_key(session=o311.session, runtime=o311.runtime, actor=admin,
                          client_name="app")
    revoke_open311_key(session=o311.session, runtime=o311.runtime, actor=admin,
                       client_id=first.id)
    second, _key = issue_open311_key(session=o311.session, runtime=o311.runtime, actor=admin,
                                     client_name="app")
    assert second.id != first.id


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, "tab\tname"])
def test_a_bad_client_name_is_refused(o311: Open311, name: str) -> None:
    with pytest.raises(ValidationFailed):
        issue_open311_key(session=o311.session, runtime=o311.runtime, actor=_admin(o311),
                          client_name=name)


def test_the_admin_api_issues_lists_and_revokes_clients(o311: Open311) -> None:
    headers = _bearer(o311, Role.SECURITY_ADMIN)
    created = o311.client.post(CLIENTS, json={"name": "fixmystreet"}, headers=headers)
    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == {"id", "name", "key_prefix", "created_by", "created_at", "revoked_at",
                         "api_key"}
    key = body["api_key"]
    report = o311.post(api_key=key, service_code="city_env.graffiti", lat=A_LAT, long=A_LON)
    assert report.status_code == 200

    listed = o311.client.get(CLIENTS, headers=headers).json()
    assert [c["name"] for c in listed] == ["fixmystreet"]
    assert "api_key" not in listed[0] and listed[0]["revoked_at"] is None

    assert o311.client.delete(f"{CLIENTS}/{body['id']}", headers=headers).status_code == 204
    assert o311.client.get(CLIENTS, headers=headers).json()[0]["revoked_at"] is not None
    refused = o311.post(api_key=key, service_code="city_env.graffiti", lat=A_LAT, long=A_LON)
    assert_spec_error(refused, 403)
    assert o311.client.delete(f"{CLIENTS}/99999", headers=headers).status_code == 404


def test_the_admin_api_refuses_other_roles_and_strangers(o311: Open311) -> None:
    headers = _bearer(o311, Role.DISPATCHER)
    assert o311.client.get(CLIENTS, headers=headers).status_code == 403
    assert o311.client.post(CLIENTS, json={"name": "x"}, headers=headers).status_code == 403
    assert o311.client.get(CLIENTS).status_code == 401
    assert o311.client.post(CLIENTS, json={"name": "x"}).status_code == 401


def test_the_demo_key_is_issued_once_and_works(o311: Open311) -> None:
    assert ensure_demo_key(session=o311.session, runtime=o311.runtime) == DEMO_KEY
    assert ensure_demo_key(session=o311.session, runtime=o311.runtime) == DEMO_KEY
    row = o311.session.scalars(sa.select(Open311Client)).one()
    assert row.name == DEMO_CLIENT_NAME and row.key_hash == hash_key(DEMO_KEY)
    response = o311.post(api_key=DEMO_KEY, service_code="city_env.graffiti", lat=A_LAT,
                         long=A_LON)
    assert response.status_code == 200


def test_a_revoked_demo_key_stays_revoked(o311: Open311) -> None:
    ensure_demo_key(session=o311.session, runtime=o311.runtime)
    row = o311.session.scalars(sa.select(Open311Client)).one()
    revoke_open311_key(session=o311.session, runtime=o311.runtime,
                       actor=SystemActor("system:test"), client_id=row.id)
    ensure_demo_key(session=o311.session, runtime=o311.runtime)
    assert client_for_key(session=o311.session, key=DEMO_KEY) is None


def test_the_demo_key_is_refused_in_production(o311: Open311) -> None:
    o311.runtime.settings.environment = Environment.PRODUCTION
    try:
        with pytest.raises(PermissionDenied):
            ensure_demo_key(session=o311.session, runtime=o311.runtime)
    finally:
        o311.runtime.settings.environment = Environment.TEST
    assert o311.session.scalar(sa.select(sa.func.count()).select_from(Open311Client)) == 0


def test_the_open311_messages_exist_in_both_languages() -> None:
    folder = resources.files("grassroots.command.open311").joinpath("locales")
    zh = json.loads(folder.joinpath("zh_CN.json").read_text(encoding="utf-8"))
    en = json.loads(folder.joinpath("en.json").read_text(encoding="utf-8"))
    assert set(zh) == set(en)
