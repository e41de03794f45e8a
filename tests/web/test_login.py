import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pyotp
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from grassroots.kernel.audit.models import AuditRow
from grassroots.kernel.auth import actions
from grassroots.kernel.auth.models import ApiToken, LoginSession, User
from grassroots.kernel.auth.roles import Role
from grassroots.kernel.clock import FixedClock
from grassroots.runtime import Runtime
from grassroots.settings import Environment
from grassroots.web import auth as web_auth
from grassroots.web.auth import SESSION_COOKIE, install_auth

PASSWORD = "Spring-Field-42"


@pytest.fixture
def app(runtime: Runtime) -> FastAPI:
    from grassroots.app import create_app

    application = create_app(runtime=runtime)
    install_auth(application)  # idempotent: a no-op once app.py installs it itself
    return application


def make_user(session: Session, runtime: Runtime, username: str,
              role: Role = Role.VIEWER) -> User:
    return actions.create_user(session=session, actor="cli", username=username,
                               display_name=username.title(), role=role, scope_code=None,
                               password=PASSWORD, runtime=runtime)


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def sign_in(client: TestClient, username: str, password: str = PASSWORD) -> str:
    """Fill in the login form; returns the redirect target."""
    token = csrf_from(client.get("/login").text)
    response = client.post("/login", data={"username": username, "password": password,
                                           "csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return response.headers["location"]


def count(session: Session, model: type) -> int:
    value = session.scalar(sa.select(sa.func.count()).select_from(model)) or 0
    session.rollback()
    return value


def test_the_root_sends_a_visitor_to_the_login_page(client: TestClient) -> None:
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login"


def test_the_login_page_is_chinese_and_carries_a_csrf_token_in_an_anonymous_session(
    client: TestClient, session: Session
) -> None:
    response = client.get("/login")
    assert response.status_code == 200
    assert "用户名" in response.text and "密码" in response.text
    assert csrf_from(response.text)
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
    assert "secure" not in cookie.lower()  # only in production
    assert count(session, LoginSession) == 1


def test_the_demo_login_page_says_totp_is_relaxed(client: TestClient, runtime: Runtime) -> None:
    runtime.settings.environment = Environment.DEMO
    assert "演示" in client.get("/login").text
    runtime.settings.environment = Environment.TEST
    assert "演示" not in client.get("/login").text


def test_signing_in_rotates_the_session_cookie_and_redirects(
    client: TestClient, session: Session, runtime: Runtime
) -> None:
    make_user(session, runtime, "zhangsan")
    client.get("/login")
    before = client.cookies[SESSION_COOKIE]
    assert sign_in(client, "zhangsan") == "/regions"
    after = client.cookies[SESSION_COOKIE]
    assert after != before
    assert count(session, LoginSession) == 1  # the pre-login row is gone
    me = client.get("/api/v1/users/me")
    assert me.status_code == 200
    assert me.json()["username"] == "zhangsan"
    assert client.get("/", follow_redirects=False).headers["location"] == "/regions"


def test_a_wrong_password_shows_the_form_again_with_a_generic_error(
    client: TestClient, session: Session, runtime: Runtime
) -> None:
    make_user(session, runtime, "lisi")
    token = csrf_from(client.get("/login").text)
    response = client.post("/login", data={"username": "lisi", "password": "Wrong-Pass-99",
                                           "csrf_token": token})
    assert response.status_code == 401
    assert "用户名或密码错误" in response.text
    assert client.get("/api/v1/users/me").status_code == 401


def test_a_login_post_without_the_csrf_token_is_refused_and_changes_nothing(
    client: TestClient, session: Session, runtime: Runtime
) -> None:
    make_user(session, runtime, "wangwu")
    client.get("/login")
    before = client.cookies[SESSION_COOKIE]
    audit_before = count(session, AuditRow)
    response = client.post("/login", data={"username": "wangwu", "password": PASSWORD,
                                           "csrf_token": "forged"}, follow_redirects=False)
    assert response.status_code == 403
    assert "表单已过期" in response.text
    assert client.cookies[SESSION_COOKIE] == before
    assert count(session, AuditRow) == audit_before
    assert session.scalar(sa.select(User.last_login_at).where(User.username == "wangwu")) is None


def test_a_login_post_without_any_session_is_refused(client: TestClient) -> None:
    response = client.post("/login", data={"username": "x", "password": "y", "csrf_token": "z"})
    assert response.status_code == 403


def test_a_bad_csrf_token_on_logout_is_refused_and_the_session_survives(
    client: TestClient, session: Session, runtime: Runtime
) -> None:
    make_user(session, runtime, "zhaoliu")
    sign_in(client, "zhaoliu")
    response = client.post("/logout", data={"csrf_token": "nope"}, follow_redirects=False)
    assert response.status_code == 403
    assert client.get("/api/v1/users/me").status_code == 200


def test_logout_ends_the_session(client: TestClient, session: Session, runtime: Runtime) -> None:
    make_user(session, runtime, "sunqi")
    sign_in(client, "sunqi")
    cookie = client.cookies[SESSION_COOKIE]
    token = csrf_from(client.get("/account/totp").text)
    response = client.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert SESSION_COOKIE not in client.cookies
    client.cookies.set(SESSION_COOKIE, cookie)  # a kept copy of the cookie is worthless now
    assert client.get("/api/v1/users/me").status_code == 401
    assert count(session, LoginSession) == 0


def test_an_idle_session_signs_out_by_itself(
    client: TestClient, session: Session, runtime: Runtime, clock: FixedClock
) -> None:
    make_user(session, runtime, "zhouba")
    sign_in(client, "zhouba")
    clock.advance(timedelta(minutes=runtime.settings.idle_timeout_minutes + 1))
    response = client.get("/api/v1/users/me")
    assert response.status_code == 401
    assert SESSION_COOKIE not in client.cookies


def test_a_bearer_token_reaches_users_me_without_csrf(
    client: TestClient, session: Session, runtime: Runtime
) -> None:
    user = make_user(session, runtime, "robot")
    _token, plaintext = actions.create_api_token(session=session, runtime=runtime, actor=user,
                                                 name="ci")
    headers = {"Authorization": f"Bearer {plaintext}"}
    me = client.get("/api/v1/users/me", headers=headers)
    assert me.status_code == 200
    assert me.json()["username"] == "robot"
    assert "regions.read" in me.json()["permissions"]
    made = client.post("/api/v1/auth/tokens", json={"name": "second"}, headers=headers)
    assert made.status_code == 201
    assert made.json()["token"].startswith("gr_")


def _client_token(session: Session, runtime: Runtime,
                  username: str) -> tuple[User, ApiToken, str]:
    user = make_user(session, runtime, username)
    token, plaintext = actions.create_api_token(session=session, runtime=runtime, actor=user,
                                                name=username)
    session.commit()
    return user, token, plaintext


def test_a_busy_clients_token_is_looked_up_once_then_kept_until_revoked(
    client: TestClient, session: Session, runtime: Runtime
) -> None:
    user, token, plaintext = _client_token(session, runtime, "poller")
    lookups: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        if statement.startswith("SELECT") and "FROM api_token" in statement:
            lookups.append(statement)

    sa.event.listen(runtime.engine, "before_cursor_execute", count)
    try:
        headers = {"Authorization": f"Bearer {plaintext}"}
        for _ in range(3):
            assert client.get("/api/v1/users/me", headers=headers).status_code == 200
        assert len(lookups) == 1
        actions.revoke_api_token(session=session, runtime=runtime, actor=user, token_id=token.id)
        assert client.get("/api/v1/users/me", headers=headers).status_code == 401
    finally:
        sa.event.remove(runtime.engine, "before_cursor_execute", count)


def test_requests_that_miss_the_kept_token_together_share_one_lookup(
    client: TestClient, session: Session, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    _user, _token, plaintext = _client_token(session, runtime, "herd")
    lookups: list[str] = []
    looked_up = web_auth._user_for_bearer

    def slow_lookup(runtime: Runtime, token: str):  # type: ignore[no-untyped-def]
        lookups.append(token)
        time.sleep(0.3)  # long enough for every request below to arrive meanwhile
        return looked_up(runtime, token)

    monkeypatch.setattr(web_auth, "_user_for_bearer", slow_lookup)
    headers = {"Authorization": f"Bearer {plaintext}"}
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda _: client.get("/api/v1/users/me", headers=headers),
                                range(6), timeout=20))
    assert [a.status_code for a in answers] == [200] * 6
    assert all(a.json()["username"] == "herd" for a in answers)
    assert len(lookups) == 1


def test_without_credentials_the_api_answers_401_json(client: TestClient) -> None:
    response = client.get("/api/v1/users/me")
    assert response.status_code == 401
    assert response.json() == {"error": {"code": "not_authenticated", "message": "请先登录"}}
    assert client.post("/api/v1/auth/tokens", json={"name": "x"}).status_code == 401


def test_an_unknown_bearer_token_is_401(client: TestClient) -> None:
    response = client.get("/api/v1/users/me", headers={"Authorization": "Bearer gr_forged"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_errors_are_in_english_when_the_browser_asks_for_it(
    client: TestClient, session: Session, runtime: Runtime
) -> None:
    response = client.get("/api/v1/users/me", headers={"Accept-Language": "en"})
    assert response.json()["error"]["message"] == "Please sign in first"
    make_user(session, runtime, "english")
    token = csrf_from(client.get("/login", headers={"Accept-Language": "en"}).text)
    failed = client.post("/login", headers={"Accept-Language": "en"},
                         data={"username": "english", "password": "Wrong-Pass-99",
                               "csrf_token": token})
    assert "Wrong username or password" in failed.text
    refused = client.post("/logout", headers={"Accept-Language": "en"},
                          data={"csrf_token": "forged"})
    assert "The form has expired" in refused.text


def test_the_lang_parameter_switches_the_language_and_is_remembered(client: TestClient) -> None:
    assert "Sign in" in client.get("/login?lang=en").text
    assert client.cookies["lang"] == "en"
    assert "Sign in" in client.get("/login").text


def test_tokens_made_from_a_browser_session_need_the_csrf_header(
    client: TestClient, session: Session, runtime: Runtime
) -> None:
    make_user(session, runtime, "browser")
    sign_in(client, "browser")
    refused = client.post("/api/v1/auth/tokens", json={"name": "nope"})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "csrf_failed"
    assert count(session, ApiToken) == 0

    csrf = csrf_from(client.get("/account/totp").text)
    made = client.post("/api/v1/auth/tokens", json={"name": "yes"},
                       headers={"X-CSRF-Token": csrf})
    assert made.status_code == 201
    token_id = made.json()["id"]
    assert client.delete(f"/api/v1/auth/tokens/{token_id}",
                         headers={"X-CSRF-Token": csrf}).status_code == 204
    bearer = {"Authorization": f"Bearer {made.json()['token']}"}
    assert client.get("/api/v1/users/me", headers=bearer).status_code == 401


def test_listing_users_needs_an_account_administrator(
    client: TestClient, session: Session, runtime: Runtime
) -> None:
    viewer = make_user(session, runtime, "viewer")
    admin = make_user(session, runtime, "secadmin", Role.SECURITY_ADMIN)
    _t, viewer_token = actions.create_api_token(session=session, runtime=runtime, actor=viewer,
                                                name="v")
    _t, admin_token = actions.create_api_token(session=session, runtime=runtime, actor=admin,
                                               name="a")
    denied = client.get("/api/v1/users", headers={"Authorization": f"Bearer {viewer_token}"})
    assert denied.status_code == 403
    listed = client.get("/api/v1/users", headers={"Authorization": f"Bearer {admin_token}"})
    assert listed.status_code == 200
    assert [u["username"] for u in listed.json()] == ["secadmin", "viewer"]


def test_a_user_with_totp_signs_in_in_two_steps(
    client: TestClient, session: Session, runtime: Runtime, clock: FixedClock
) -> None:
    user = make_user(session, runtime, "twostep")
    secret = actions.begin_totp_enrolment(session=session, runtime=runtime, user=user).secret
    totp = pyotp.TOTP(secret)
    actions.confirm_totp(session=session, runtime=runtime, user=user, code=totp.at(clock.now()))
    clock.advance(timedelta(seconds=30))

    assert sign_in(client, "twostep") == "/login/totp"
    assert client.get("/api/v1/users/me").status_code == 401  # the password alone is not enough
    pending_cookie = client.cookies[SESSION_COOKIE]
    page = client.get("/login/totp")
    wrong = client.post("/login/totp", data={"code": "000000", "csrf_token": csrf_from(page.text)})
    assert wrong.status_code == 401
    response = client.post("/login/totp", data={"code": totp.at(clock.now()),
                                                "csrf_token": csrf_from(page.text)},
                           follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/regions"
    assert client.cookies[SESSION_COOKIE] != pending_cookie
    assert client.get("/api/v1/users/me").json()["totp_enabled"] is True


def test_an_admin_must_enrol_totp_when_the_setting_requires_it(
    client: TestClient, session: Session, runtime: Runtime, clock: FixedClock
) -> None:
    runtime.settings.require_admin_totp = True
    make_user(session, runtime, "sysadmin", Role.SYSTEM_ADMIN)
    assert sign_in(client, "sysadmin") == "/account/totp"
    assert client.get("/api/v1/users/me").status_code == 401
    page = client.get("/account/totp")
    assert "生成密钥" in page.text
    shown = client.post("/account/totp/begin", data={"csrf_token": csrf_from(page.text)})
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', shown.text)
    assert secret is not None
    assert "otpauth://totp/" in shown.text
    done = client.post("/account/totp", data={"code": pyotp.TOTP(secret.group(1)).at(clock.now()),
                                              "csrf_token": csrf_from(shown.text)},
                       follow_redirects=False)
    assert done.status_code == 303
    me = client.get("/api/v1/users/me")
    assert me.status_code == 200 and me.json()["totp_enabled"] is True


def test_the_next_parameter_cannot_redirect_off_site(
    client: TestClient, session: Session, runtime: Runtime
) -> None:
    make_user(session, runtime, "careful")
    token = csrf_from(client.get("/login").text)
    response = client.post("/login", data={"username": "careful", "password": PASSWORD,
                                           "csrf_token": token, "next": "//evil.example/x"},
                           follow_redirects=False)
    assert response.headers["location"] == "/regions"


def test_a_signed_out_visitor_opening_a_page_is_sent_to_log_in_and_back(
    app: FastAPI, client: TestClient, session: Session, runtime: Runtime
) -> None:
    from grassroots.web.deps import CurrentUser

    @app.get("/only-for-members")
    def members(user: CurrentUser) -> dict[str, str]:
        return {"hello": user.username}

    response = client.get("/only-for-members?tab=2", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/only-for-members%3Ftab%3D2"
    make_user(session, runtime, "member")
    token = csrf_from(client.get(response.headers["location"]).text)
    signed_in = client.post("/login", data={"username": "member", "password": PASSWORD,
                                            "csrf_token": token, "next": "/only-for-members"},
                            follow_redirects=False)
    assert signed_in.headers["location"] == "/only-for-members"
    assert client.get("/only-for-members").json() == {"hello": "member"}


def test_a_multipart_form_carries_its_csrf_token_too(
    client: TestClient, session: Session, runtime: Runtime
) -> None:
    make_user(session, runtime, "uploader")
    sign_in(client, "uploader")
    token = csrf_from(client.get("/account/totp").text)
    response = client.post("/logout", data={"csrf_token": token},
                           files={"attachment": ("note.txt", b"hello")}, follow_redirects=False)
    assert response.status_code == 303
    assert client.get("/api/v1/users/me").status_code == 401


@pytest.mark.parametrize(("role", "home"), [
    (Role.DISPATCHER, "/command"),
    (Role.GRID_WORKER, "/field"),
    (Role.IRRIGATION_DISPATCHER, "/irrigation"),
    (Role.VIEWER, "/regions"),
])
def test_each_role_lands_on_its_own_start_page_after_login(
    client: TestClient, session: Session, runtime: Runtime, role: Role, home: str,
) -> None:
    make_user(session, runtime, f"user-{role.value}", role)
    assert sign_in(client, f"user-{role.value}") == home
    assert client.get("/", follow_redirects=False).headers["location"] == home
