from datetime import timedelta

import pyotp
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from grassroots.kernel.audit.chain import verify_chain
from grassroots.kernel.audit.models import AuditRow
from grassroots.kernel.auth import actions, queries
from grassroots.kernel.auth.hashers import hash_password
from grassroots.kernel.auth.models import ApiToken, LoginSession, User
from grassroots.kernel.auth.roles import Role
from grassroots.kernel.clock import FixedClock
from grassroots.kernel.errors import (
    Conflict,
    NotAuthenticated,
    NotFound,
    PermissionDenied,
    ValidationFailed,
)
from grassroots.kernel.regions.models import Region, RegionLevel
from grassroots.runtime import Runtime

PASSWORD = "Spring-Field-42"


def make_region(session: Session, code: str, parent: Region | None = None) -> Region:
    with session.begin():
        region = Region(code=code, name=code, level=RegionLevel.STREET if parent is None
                        else RegionLevel.ZONE, parent_id=parent.id if parent else None,
                        geometry="{}", min_lon=0, min_lat=0, max_lon=1, max_lat=1)
        session.add(region)
        session.flush()
        region.path = (parent.path if parent else "/") + f"{region.id}/"
    return region


def make_user(session: Session, runtime: Runtime, username: str, role: Role = Role.VIEWER,
              scope_code: str | None = None, **extra: str) -> User:
    return actions.create_user(session=session, actor="cli", username=username,
                               display_name=username.title(), role=role,
                               scope_code=scope_code, password=PASSWORD, runtime=runtime,
                               **extra)


def audit_rows(session: Session, action: str | None = None) -> list[AuditRow]:
    query = sa.select(AuditRow).order_by(AuditRow.seq)
    if action is not None:
        query = query.where(AuditRow.action == action)
    rows = list(session.scalars(query))
    session.rollback()
    return rows


def login(session: Session, runtime: Runtime, username: str, password: str = PASSWORD) -> User:
    return actions.authenticate(session=session, runtime=runtime, username=username,
                                password=password, source_ip="10.0.0.7")


# --- accounts --------------------------------------------------------------------------------


def test_creating_a_user_hashes_the_password_and_writes_one_audit_row(
    session: Session, runtime: Runtime
) -> None:
    user = make_user(session, runtime, "zhangsan")
    assert user.id is not None
    assert user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in user.password_hash
    rows = audit_rows(session)
    assert [(r.action, r.actor, r.object_id, r.outcome) for r in rows] == [
        ("user:create", "cli", str(user.id), "success")]


def test_the_scope_code_names_a_region(session: Session, runtime: Runtime) -> None:
    street = make_region(session, "S01")
    user = make_user(session, runtime, "lisi", scope_code="S01")
    assert user.scope_region_id == street.id


def test_an_unknown_scope_code_is_refused_with_a_clear_message(
    session: Session, runtime: Runtime
) -> None:
    with pytest.raises(ValidationFailed) as caught:
        make_user(session, runtime, "wangwu", scope_code="NOPE")
    assert caught.value.message_id == "auth.scope.unknown"
    assert "NOPE" in caught.value.message("en")
    assert session.scalar(sa.select(sa.func.count()).select_from(User)) == 0


def test_a_username_is_taken_whatever_its_case(session: Session, runtime: Runtime) -> None:
    make_user(session, runtime, "zhaoliu")
    with pytest.raises(Conflict):
        make_user(session, runtime, "ZhaoLiu")


def test_a_weak_password_is_refused_before_anything_is_written(
    session: Session, runtime: Runtime
) -> None:
    with pytest.raises(ValidationFailed) as caught:
        actions.create_user(session=session, actor="cli", username="sunqi", display_name="孙七",
                            role=Role.VIEWER, scope_code=None, password="password",
                            runtime=runtime)
    assert caught.value.message_id == "auth.password.too_short"
    assert audit_rows(session) == []


def test_an_account_made_without_a_password_cannot_sign_in_with_one(
    session: Session, runtime: Runtime
) -> None:
    user = actions.create_user(session=session, actor="seed", username="bh0001",
                               display_name="楼栋长", role=Role.BUILDING_HEAD, scope_code=None,
                               password=None, runtime=runtime)
    assert user.password_hash.startswith("!")
    with pytest.raises(NotAuthenticated):
        login(session, runtime, "bh0001", "")
    with pytest.raises(NotAuthenticated):
        login(session, runtime, "bh0001", user.password_hash)


def test_the_phone_is_encrypted_at_rest_and_found_by_its_blind_index(
    session: Session, runtime: Runtime
) -> None:
    user = make_user(session, runtime, "zhouba", phone="138 0013 8000")
    stored = session.execute(
        sa.text("SELECT phone_enc, phone_index FROM app_user WHERE id = :id"), {"id": user.id}
    ).one()
    session.rollback()
    assert "13800138000" not in stored.phone_enc
    assert "13800138000" not in stored.phone_index
    assert runtime.crypto.decrypt(stored.phone_enc, context="user.phone") == "13800138000"
    index = runtime.crypto.blind_index("13800138000", context="user.phone")
    assert session.scalar(sa.select(User.username).where(User.phone_index == index)) == "zhouba"


# --- logging in and lockout ------------------------------------------------------------------


def test_the_right_password_signs_in_and_is_audited(session: Session, runtime: Runtime) -> None:
    make_user(session, runtime, "wujiu")
    user = login(session, runtime, "wujiu")
    assert user.username == "wujiu"
    row = audit_rows(session, "user:login")[0]
    assert (row.actor, row.outcome, row.source_ip) == ("wujiu", "success", "10.0.0.7")


def test_a_wrong_password_is_refused_and_audited_as_a_failure(
    session: Session, runtime: Runtime
) -> None:
    make_user(session, runtime, "zhengshi")
    with pytest.raises(NotAuthenticated) as caught:
        login(session, runtime, "zhengshi", "Wrong-Password-1")
    assert caught.value.message_id == "auth.login.failed"
    failures = audit_rows(session, "user:login:failed")
    assert [(r.actor, r.outcome) for r in failures] == [("zhengshi", "failure")]
    assert '"bad_password"' in failures[0].detail


def test_an_unknown_username_fails_exactly_like_a_wrong_password(
    session: Session, runtime: Runtime
) -> None:
    make_user(session, runtime, "known")
    with pytest.raises(NotAuthenticated) as unknown:
        login(session, runtime, "nobody")
    with pytest.raises(NotAuthenticated) as wrong:
        login(session, runtime, "known", "Wrong-Password-1")
    assert unknown.value.message("en") == wrong.value.message("en")
    rows = audit_rows(session, "user:login:failed")
    assert [r.outcome for r in rows] == ["failure", "failure"]
    assert '"unknown_user"' in rows[0].detail


def test_the_account_locks_after_the_threshold_and_unlocks_when_the_period_ends(
    session: Session, runtime: Runtime, clock: FixedClock
) -> None:
    make_user(session, runtime, "locky")
    threshold = runtime.settings.lockout_threshold
    for _ in range(threshold):
        with pytest.raises(NotAuthenticated):
            login(session, runtime, "locky", "Wrong-Password-1")
    assert len(audit_rows(session, "user:locked")) == 1

    # Locked: even the right password is refused, and the refusal is audited.
    with pytest.raises(NotAuthenticated):
        login(session, runtime, "locky")
    assert '"locked"' in audit_rows(session, "user:login:failed")[-1].detail

    clock.advance(timedelta(minutes=runtime.settings.lockout_minutes - 1))
    with pytest.raises(NotAuthenticated):
        login(session, runtime, "locky")

    clock.advance(timedelta(minutes=1))
    assert login(session, runtime, "locky").username == "locky"


def test_a_success_resets_the_failure_count(session: Session, runtime: Runtime) -> None:
    make_user(session, runtime, "resetme")
    for _ in range(runtime.settings.lockout_threshold - 1):
        with pytest.raises(NotAuthenticated):
            login(session, runtime, "resetme", "Wrong-Password-1")
    login(session, runtime, "resetme")
    with pytest.raises(NotAuthenticated):
        login(session, runtime, "resetme", "Wrong-Password-1")
    assert login(session, runtime, "resetme").failed_logins == 0
    assert audit_rows(session, "user:locked") == []


def test_a_deactivated_account_cannot_sign_in(session: Session, runtime: Runtime) -> None:
    admin = make_user(session, runtime, "sysadmin", Role.SYSTEM_ADMIN)
    target = make_user(session, runtime, "leaver")
    actions.deactivate_user(session=session, runtime=runtime, actor=admin, user_id=target.id)
    with pytest.raises(NotAuthenticated):
        login(session, runtime, "leaver")


def test_a_hash_from_another_algorithm_is_upgraded_at_login(
    session: Session, runtime: Runtime
) -> None:
    user = make_user(session, runtime, "legacy")
    with session.begin():
        session.execute(sa.update(User).where(User.id == user.id).values(
            password_hash=hash_password(PASSWORD, algorithm="pbkdf2_sm3")))
    assert login(session, runtime, "legacy").password_hash.startswith("$argon2id$")


# --- login sessions --------------------------------------------------------------------------


def test_login_always_makes_a_new_session_and_deletes_the_pre_login_one(
    session: Session, runtime: Runtime
) -> None:
    user = make_user(session, runtime, "rotator")
    anonymous, before = actions.start_session(session=session, runtime=runtime, user=None)
    signed_in, after = actions.start_session(session=session, runtime=runtime, user=user,
                                             previous_token=before)
    assert after != before
    assert signed_in.csrf_token != anonymous.csrf_token
    assert actions.load_session(session=session, runtime=runtime, token=before) is None
    loaded = actions.load_session(session=session, runtime=runtime, token=after)
    assert loaded is not None and loaded.user_id == user.id
    assert len(audit_rows(session, "session:rotate")) == 1


def test_only_a_hash_of_the_cookie_is_stored(session: Session, runtime: Runtime) -> None:
    _login_session, cookie = actions.start_session(session=session, runtime=runtime, user=None)
    hashes = list(session.scalars(sa.select(LoginSession.token_hash)))
    session.rollback()
    assert cookie not in hashes and len(hashes) == 1


def test_an_idle_session_expires_and_is_deleted(
    session: Session, runtime: Runtime, clock: FixedClock
) -> None:
    user = make_user(session, runtime, "sleeper")
    _login_session, cookie = actions.start_session(session=session, runtime=runtime, user=user)
    clock.advance(timedelta(minutes=runtime.settings.idle_timeout_minutes))
    assert actions.load_session(session=session, runtime=runtime, token=cookie) is None
    assert session.scalar(sa.select(sa.func.count()).select_from(LoginSession)) == 0
    session.rollback()
    assert len(audit_rows(session, "session:expire")) == 1


def test_activity_keeps_a_session_alive(
    session: Session, runtime: Runtime, clock: FixedClock
) -> None:
    user = make_user(session, runtime, "busy")
    _login_session, cookie = actions.start_session(session=session, runtime=runtime, user=user)
    for _ in range(3):
        clock.advance(timedelta(minutes=runtime.settings.idle_timeout_minutes - 5))
        assert actions.load_session(session=session, runtime=runtime, token=cookie) is not None


def test_signing_out_deletes_the_session_and_is_audited(
    session: Session, runtime: Runtime
) -> None:
    user = make_user(session, runtime, "leaving")
    _login_session, cookie = actions.start_session(session=session, runtime=runtime, user=user)
    actions.end_session(session=session, runtime=runtime, token=cookie)
    assert actions.load_session(session=session, runtime=runtime, token=cookie) is None
    assert len(audit_rows(session, "user:logout")) == 1


def test_purging_removes_only_expired_sessions(
    session: Session, runtime: Runtime, clock: FixedClock
) -> None:
    actions.start_session(session=session, runtime=runtime, user=None)
    clock.advance(timedelta(minutes=runtime.settings.idle_timeout_minutes + 1))
    _fresh, cookie = actions.start_session(session=session, runtime=runtime, user=None)
    assert actions.purge_expired_sessions(session=session, runtime=runtime) == 1
    assert actions.load_session(session=session, runtime=runtime, token=cookie) is not None


# --- three-administrator separation ----------------------------------------------------------


def test_the_system_admin_creates_viewers_but_cannot_grant_roles(
    session: Session, runtime: Runtime
) -> None:
    sysadmin = make_user(session, runtime, "sysadmin", Role.SYSTEM_ADMIN)
    viewer = actions.create_user(session=session, actor=sysadmin, username="newbie",
                                 display_name="新人", role=Role.VIEWER, scope_code=None,
                                 password=PASSWORD, runtime=runtime)
    assert viewer.role == Role.VIEWER
    with pytest.raises(PermissionDenied) as caught:
        actions.create_user(session=session, actor=sysadmin, username="boss",
                            display_name="老板", role=Role.DISPATCHER, scope_code=None,
                            password=PASSWORD, runtime=runtime)
    assert caught.value.message_id == "auth.role.needs_security_admin"
    with pytest.raises(PermissionDenied):
        actions.set_role(session=session, runtime=runtime, actor=sysadmin, user_id=viewer.id,
                         role=Role.DISPATCHER)


def test_the_security_admin_assigns_roles_but_cannot_create_accounts(
    session: Session, runtime: Runtime
) -> None:
    secadmin = make_user(session, runtime, "secadmin", Role.SECURITY_ADMIN)
    target = make_user(session, runtime, "promoted")
    updated = actions.set_role(session=session, runtime=runtime, actor=secadmin,
                               user_id=target.id, role=Role.DISPATCHER)
    assert updated.role == Role.DISPATCHER
    row = audit_rows(session, "user:role:change")[0]
    assert row.actor == "secadmin" and '"to": "dispatcher"' in row.detail
    with pytest.raises(PermissionDenied):
        actions.create_user(session=session, actor=secadmin, username="sneaky",
                            display_name="x", role=Role.VIEWER, scope_code=None,
                            password=PASSWORD, runtime=runtime)


def test_the_audit_admin_can_neither_manage_accounts_nor_assign_roles(
    session: Session, runtime: Runtime
) -> None:
    auditor = make_user(session, runtime, "auditor", Role.AUDIT_ADMIN)
    target = make_user(session, runtime, "bystander")
    with pytest.raises(PermissionDenied):
        actions.set_role(session=session, runtime=runtime, actor=auditor, user_id=target.id,
                         role=Role.AUDIT_ADMIN)
    with pytest.raises(PermissionDenied):
        actions.deactivate_user(session=session, runtime=runtime, actor=auditor,
                                user_id=target.id)
    with pytest.raises(PermissionDenied):
        actions.create_user(session=session, actor=auditor, username="other",
                            display_name="x", role=Role.VIEWER, scope_code=None,
                            password=PASSWORD, runtime=runtime)


def test_nobody_changes_their_own_role(session: Session, runtime: Runtime) -> None:
    secadmin = make_user(session, runtime, "secadmin", Role.SECURITY_ADMIN)
    with pytest.raises(PermissionDenied):
        actions.set_role(session=session, runtime=runtime, actor=secadmin, user_id=secadmin.id,
                         role=Role.SYSTEM_ADMIN)


def test_the_security_admin_sets_scopes_within_their_own(
    session: Session, runtime: Runtime
) -> None:
    street = make_region(session, "S01")
    zone = make_region(session, "S01-Z1", street)
    make_region(session, "S02")
    secadmin = make_user(session, runtime, "scoped-sec", Role.SECURITY_ADMIN, scope_code="S01")
    target = make_user(session, runtime, "worker", scope_code="S01")
    moved = actions.set_scope(session=session, runtime=runtime, actor=secadmin,
                              user_id=target.id, scope_code="S01-Z1")
    assert moved.scope_region_id == zone.id
    with pytest.raises(PermissionDenied):
        actions.set_scope(session=session, runtime=runtime, actor=secadmin, user_id=target.id,
                          scope_code="S02")
    with pytest.raises(PermissionDenied):
        actions.set_scope(session=session, runtime=runtime, actor=secadmin, user_id=target.id,
                          scope_code=None)


def test_a_scoped_admin_sees_only_users_inside_their_scope(
    session: Session, runtime: Runtime
) -> None:
    make_region(session, "S01")
    make_region(session, "S02")
    sysadmin = make_user(session, runtime, "s01-admin", Role.SYSTEM_ADMIN, scope_code="S01")
    make_user(session, runtime, "inside", scope_code="S01")
    outside = make_user(session, runtime, "outside", scope_code="S02")
    make_user(session, runtime, "everywhere")
    names = [u.username for u in queries.list_users(session=session, viewer=sysadmin)]
    assert names == ["inside", "s01-admin"]
    with pytest.raises(NotFound):
        actions.deactivate_user(session=session, runtime=runtime, actor=sysadmin,
                                user_id=outside.id)


def test_deactivating_ends_sessions_and_revokes_tokens(
    session: Session, runtime: Runtime
) -> None:
    sysadmin = make_user(session, runtime, "sysadmin", Role.SYSTEM_ADMIN)
    target = make_user(session, runtime, "gone")
    _s, cookie = actions.start_session(session=session, runtime=runtime, user=target)
    _t, token = actions.create_api_token(session=session, runtime=runtime, actor=target,
                                         name="script")
    actions.deactivate_user(session=session, runtime=runtime, actor=sysadmin, user_id=target.id)
    assert actions.load_session(session=session, runtime=runtime, token=cookie) is None
    assert actions.user_for_api_token(session=session, runtime=runtime, token=token) is None


# --- passwords -------------------------------------------------------------------------------


def test_changing_ones_password_needs_the_current_one(
    session: Session, runtime: Runtime
) -> None:
    user = make_user(session, runtime, "changer")
    with pytest.raises(ValidationFailed) as caught:
        actions.change_password(session=session, runtime=runtime, actor=user, user_id=user.id,
                                current_password="Not-The-One-1", new_password="Autumn-Leaf-77")
    assert caught.value.message_id == "auth.password.wrong_current"
    assert audit_rows(session, "user:password:change")[0].outcome == "failure"
    actions.change_password(session=session, runtime=runtime, actor=user, user_id=user.id,
                            current_password=PASSWORD, new_password="Autumn-Leaf-77")
    assert login(session, runtime, "changer", "Autumn-Leaf-77").id == user.id


def test_a_password_reset_by_the_system_admin_ends_the_users_sessions(
    session: Session, runtime: Runtime
) -> None:
    sysadmin = make_user(session, runtime, "sysadmin", Role.SYSTEM_ADMIN)
    user = make_user(session, runtime, "forgetful")
    _s, cookie = actions.start_session(session=session, runtime=runtime, user=user)
    actions.change_password(session=session, runtime=runtime, actor=sysadmin, user_id=user.id,
                            new_password="Winter-Snow-88")
    assert actions.load_session(session=session, runtime=runtime, token=cookie) is None
    assert audit_rows(session, "user:password:reset")[0].actor == "sysadmin"


# --- TOTP ------------------------------------------------------------------------------------


def test_totp_enrolment_stores_the_secret_encrypted_and_confirms_with_a_code(
    session: Session, runtime: Runtime, clock: FixedClock
) -> None:
    user = make_user(session, runtime, "twofactor")
    enrolment = actions.begin_totp_enrolment(session=session, runtime=runtime, user=user)
    assert enrolment.uri.startswith("otpauth://totp/Grassroots:twofactor?secret=")
    stored = session.scalar(sa.select(User.totp_secret_enc).where(User.id == user.id))
    session.rollback()
    assert stored is not None and enrolment.secret not in stored

    with pytest.raises(ValidationFailed):
        actions.confirm_totp(session=session, runtime=runtime, user=user, code="000000")
    code = pyotp.TOTP(enrolment.secret).at(clock.now())
    confirmed = actions.confirm_totp(session=session, runtime=runtime, user=user, code=code)
    assert confirmed.totp_enabled
    assert [r.outcome for r in audit_rows(session, "totp:enable")] == ["failure", "success"]
    assert queries.totp_required(runtime=runtime, user=confirmed)


def test_a_totp_code_verifies_once_and_not_again(
    session: Session, runtime: Runtime, clock: FixedClock
) -> None:
    user = make_user(session, runtime, "otpuser")
    secret = actions.begin_totp_enrolment(session=session, runtime=runtime, user=user).secret
    totp = pyotp.TOTP(secret)
    actions.confirm_totp(session=session, runtime=runtime, user=user, code=totp.at(clock.now()))

    clock.advance(timedelta(seconds=30))
    code = totp.at(clock.now())
    assert actions.verify_totp(session=session, runtime=runtime, user=user, code=code)
    assert not actions.verify_totp(session=session, runtime=runtime, user=user, code=code)
    clock.advance(timedelta(seconds=30))
    assert actions.verify_totp(session=session, runtime=runtime, user=user,
                               code=totp.at(clock.now()))
    assert len(audit_rows(session, "user:login:totp")) == 2


def test_wrong_totp_codes_lock_the_account_like_wrong_passwords(
    session: Session, runtime: Runtime, clock: FixedClock
) -> None:
    user = make_user(session, runtime, "guessed")
    secret = actions.begin_totp_enrolment(session=session, runtime=runtime, user=user).secret
    totp = pyotp.TOTP(secret)
    actions.confirm_totp(session=session, runtime=runtime, user=user, code=totp.at(clock.now()))
    wrong = f"{(int(totp.at(clock.now())) + 1) % 1_000_000:06d}"
    for _ in range(runtime.settings.lockout_threshold):
        assert not actions.verify_totp(session=session, runtime=runtime, user=user, code=wrong)
    clock.advance(timedelta(seconds=60))
    assert not actions.verify_totp(session=session, runtime=runtime, user=user,
                                   code=totp.at(clock.now()))
    assert len(audit_rows(session, "user:locked")) == 1


def test_admin_roles_need_totp_only_when_the_setting_says_so(
    session: Session, runtime: Runtime
) -> None:
    admin = make_user(session, runtime, "sysadmin", Role.SYSTEM_ADMIN)
    assert not queries.totp_required(runtime=runtime, user=admin)
    runtime.settings.require_admin_totp = True
    assert queries.totp_required(runtime=runtime, user=admin)


# --- API tokens ------------------------------------------------------------------------------


def test_an_api_token_is_shown_once_stored_hashed_and_finds_its_user(
    session: Session, runtime: Runtime
) -> None:
    user = make_user(session, runtime, "integrator")
    token, plaintext = actions.create_api_token(session=session, runtime=runtime, actor=user,
                                                name="sync script")
    assert plaintext.startswith("gr_") and len(plaintext) > 40
    assert token.prefix == plaintext[:10]
    stored = session.scalar(sa.select(ApiToken.token_hash).where(ApiToken.id == token.id))
    session.rollback()
    assert stored != plaintext and plaintext not in (stored or "")
    found = actions.user_for_api_token(session=session, runtime=runtime, token=plaintext)
    assert found is not None and found.id == user.id
    assert actions.user_for_api_token(session=session, runtime=runtime, token="gr_nope") is None
    assert audit_rows(session, "token:create")[0].actor == "integrator"


def test_a_revoked_token_stops_working(session: Session, runtime: Runtime) -> None:
    user = make_user(session, runtime, "revoker")
    token, plaintext = actions.create_api_token(session=session, runtime=runtime, actor=user,
                                                name="old")
    actions.revoke_api_token(session=session, runtime=runtime, actor=user, token_id=token.id)
    assert actions.user_for_api_token(session=session, runtime=runtime, token=plaintext) is None
    assert len(audit_rows(session, "token:revoke")) == 1


def test_only_the_security_admin_makes_or_revokes_tokens_for_others(
    session: Session, runtime: Runtime
) -> None:
    secadmin = make_user(session, runtime, "secadmin", Role.SECURITY_ADMIN)
    alice = make_user(session, runtime, "alice")
    bob = make_user(session, runtime, "bob")
    with pytest.raises(PermissionDenied):
        actions.create_api_token(session=session, runtime=runtime, actor=alice, name="x",
                                 user_id=bob.id)
    token, _plaintext = actions.create_api_token(session=session, runtime=runtime,
                                                 actor=secadmin, name="for bob", user_id=bob.id)
    assert token.user_id == bob.id
    with pytest.raises(NotFound):
        actions.revoke_api_token(session=session, runtime=runtime, actor=alice,
                                 token_id=token.id)
    actions.revoke_api_token(session=session, runtime=runtime, actor=secadmin, token_id=token.id)


def test_every_write_above_keeps_the_audit_chain_intact(
    session: Session, runtime: Runtime
) -> None:
    user = make_user(session, runtime, "chained")
    with pytest.raises(NotAuthenticated):
        login(session, runtime, "chained", "Wrong-Password-1")
    login(session, runtime, "chained")
    actions.create_api_token(session=session, runtime=runtime, actor=user, name="t")
    report = verify_chain(session=session, runtime=runtime)
    assert report.ok, report.describe()
    assert report.rows_checked == 4


def test_an_action_joins_a_transaction_the_caller_began(
    session: Session, runtime: Runtime
) -> None:
    with pytest.raises(RuntimeError), session.begin():
        make_user(session, runtime, "rolledback")
        raise RuntimeError("the caller's later step fails")
    assert count_users(session) == 0
    assert audit_rows(session) == []


def count_users(session: Session) -> int:
    value = session.scalar(sa.select(sa.func.count()).select_from(User)) or 0
    session.rollback()
    return value


# --- verified tokens kept for a moment (the API's hot path) ----------------------------------


def _verified(session: Session, runtime: Runtime, username: str,
              role: Role = Role.VIEWER) -> tuple[User, ApiToken, str]:
    user = make_user(session, runtime, username, role)
    token, plaintext = actions.create_api_token(session=session, runtime=runtime, actor=user,
                                                name="client")
    assert actions.user_for_api_token(session=session, runtime=runtime, token=plaintext)
    session.commit()
    return user, token, plaintext


def test_a_token_just_verified_gives_its_user_again_without_the_database(
        session: Session, runtime: Runtime) -> None:
    user, _token, plaintext = _verified(session, runtime, "busyclient", Role.DISPATCHER)
    first = actions.cached_token_user(runtime, plaintext)
    second = actions.cached_token_user(runtime, plaintext)
    assert first is not None and second is not None and first is not second
    assert (first.id, first.username, first.role, first.scope_region_id) == (
        user.id, "busyclient", Role.DISPATCHER, user.scope_region_id)
    assert sa.inspect(first).detached  # each request gets its own copy, in no session
    assert actions.cached_token_user(runtime, plaintext + "x") is None
    assert actions.cached_token_user(runtime, "gr_never_seen") is None


def test_a_kept_token_is_forgotten_once_it_is_revoked_or_its_user_changes(
        session: Session, runtime: Runtime) -> None:
    secadmin = make_user(session, runtime, "secadmin", Role.SECURITY_ADMIN)
    admin = make_user(session, runtime, "sysadmin", Role.SYSTEM_ADMIN)
    user, token, plaintext = _verified(session, runtime, "changing")
    actions.revoke_api_token(session=session, runtime=runtime, actor=user, token_id=token.id)
    assert actions.cached_token_user(runtime, plaintext) is None

    _, _, second = _verified(session, runtime, "promoted")
    promoted = session.scalars(sa.select(User).where(User.username == "promoted")).one()
    actions.set_role(session=session, runtime=runtime, actor=secadmin, user_id=promoted.id,
                     role=Role.DISPATCHER)
    assert actions.cached_token_user(runtime, second) is None
    again = actions.user_for_api_token(session=session, runtime=runtime, token=second)
    assert again is not None and again.role == Role.DISPATCHER

    actions.deactivate_user(session=session, runtime=runtime, actor=admin, user_id=promoted.id)
    assert actions.cached_token_user(runtime, second) is None
    assert actions.user_for_api_token(session=session, runtime=runtime, token=second) is None


def test_a_kept_token_lapses_after_its_few_seconds(
        session: Session, runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(actions, "API_TOKEN_CACHE_S", -1.0)  # already out of date when kept
    _, _, plaintext = _verified(session, runtime, "lapsing")
    assert actions.cached_token_user(runtime, plaintext) is None
