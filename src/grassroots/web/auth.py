"""Who is asking (session cookie or bearer token), CSRF checks, login pages and the token API.

`install_auth(app)` adds AuthMiddleware and the router. For every request the middleware sets
`request.state.user` (a signed-in User or None), `request.state.pending_user` (password accepted,
TOTP still due), `request.state.login_session`, `request.state.csrf_token` and
`request.state.language`.

CSRF: an unsafe request (POST, PUT, PATCH, DELETE) that does not carry a bearer token must bring
its session's token in the form field `csrf_token` or the `X-CSRF-Token` header, or it gets 403
error.csrf. This holds for the login form too (an anonymous session carries its token), which
stops login CSRF. Bearer requests are exempt (a browser never adds that header by itself), and
so are the paths in CSRF_EXEMPT_PREFIXES.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.types import ASGIApp, Receive, Scope, Send

from grassroots.db import REQUEST_SESSION_ATTR
from grassroots.kernel.auth import actions, queries
from grassroots.kernel.auth.models import LoginSession, User
from grassroots.kernel.auth.roles import ROLE_PERMISSIONS, Permission, Role
from grassroots.kernel.errors import Conflict, NotAuthenticated, ValidationFailed
from grassroots.kernel.i18n import LANGUAGES, negotiate, translate
from grassroots.plumbing import release_request_session
from grassroots.runtime import Runtime
from grassroots.settings import Environment
from grassroots.web.deps import (
    ClientIp,
    CurrentUser,
    LanguageDep,
    RuntimeDep,
    SessionDep,
    require_any_permission,
)
from grassroots.web.errors import error_response, wants_json

SESSION_COOKIE = "gr_session"
LANGUAGE_COOKIE = "lang"
LANGUAGE_COOKIE_MAX_AGE = 365 * 24 * 3600
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Machine-to-machine endpoints authenticate by other means (Open311 API keys); add more here.
CSRF_EXEMPT_PREFIXES: list[str] = ["/open311/"]
# Served without looking anyone up: no page there depends on who asks.
SKIP_PREFIXES: tuple[str, ...] = ("/static/",)
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
HOME_PATH = "/regions"
# Where each role starts its day: the big screen, the phone page, the irrigation map.
ROLE_HOME = {
    Role.DISPATCHER: "/command",
    Role.STREET_LEADER: "/command",
    Role.ZONE_LEADER: "/command/notices",
    Role.ZONE_RESPONDER: "/field/mine",
    Role.GRID_WORKER: "/field",
    Role.BUILDING_HEAD: "/field",
    Role.IRRIGATION_DISPATCHER: "/irrigation",
    Role.GATE_OPERATOR: "/irrigation",
    Role.DISTRICT_DEPARTMENT: "/field/mine",
    Role.SYSTEM_ADMIN: "/admin/categories",
}


def home_path(user: User | None) -> str:
    return ROLE_HOME.get(user.role, HOME_PATH) if user is not None else HOME_PATH
LOGIN_PATH = "/login"


# --- per-request identity --------------------------------------------------------------------


def _user_for_bearer(runtime: Runtime, token: str) -> tuple[User | None, Session | None]:
    """The token's user, and the session it was looked up in for the request to go on with.

    The user is detached from that session, as it would be from a closed one. With no user the
    session is closed and None.
    """
    session = runtime.session_factory()
    try:
        user = actions.user_for_api_token(session=session, runtime=runtime, token=token)
        if user is not None:
            session.expunge(user)
            return user, session
    except BaseException:
        session.close()
        raise
    session.close()
    return None, None


def _session_for_cookie(runtime: Runtime,
                        cookie: str) -> tuple[LoginSession, User | None] | None:
    with runtime.session_factory() as session:
        login_session = actions.load_session(session=session, runtime=runtime, token=cookie)
        if login_session is None:
            return None
        user = session.get(User, login_session.user_id) if login_session.user_id else None
        return login_session, user


def is_csrf_exempt(path: str) -> bool:
    return any(path.startswith(prefix) for prefix in CSRF_EXEMPT_PREFIXES)


async def _submitted_csrf(request: Request) -> str | None:
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    if request.headers.get("content-type", "").startswith(FORM_TYPES):
        # Reading the body here caches it, so the route can parse the same form again.
        await request.body()
        value = (await request.form()).get(CSRF_FIELD)
        return value if isinstance(value, str) else None
    return None


def _csrf_matches(submitted: str | None, login_session: LoginSession | None) -> bool:
    if not submitted or login_session is None:
        return False
    return secrets.compare_digest(submitted.encode(), login_session.csrf_token.encode())


def _error(request: Request, status: int, code: str, message_id: str) -> Response:
    return error_response(request, status, code, translate(message_id, request.state.language))


def _sets_session_cookie(response: Response) -> bool:
    prefix = SESSION_COOKIE + "="
    return any(value.startswith(prefix) for value in response.headers.getlist("set-cookie"))


def _start(request: Request) -> tuple[Runtime, str | None]:
    """Reset the per-request identity in request.state and negotiate the language."""
    state = request.state
    state.user = None
    state.pending_user = None
    state.login_session = None
    state.csrf_token = ""
    state.auth_method = None
    explicit_language = request.query_params.get("lang")
    state.language = negotiate(request.headers.get("accept-language"),
                               explicit_language or request.cookies.get(LANGUAGE_COOKIE))
    runtime: Runtime = request.app.state.runtime
    return runtime, explicit_language


def _unauthenticated(request: Request) -> Response:
    response = _error(request, 401, "not_authenticated", "error.not_authenticated")
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


# The token lookups under way, per event loop: (loop id, token) -> done when the lookup is.
_lookups: dict[tuple[int, str], asyncio.Future[None]] = {}


async def _bearer_user(request: Request, runtime: Runtime,
                       authorization: str) -> tuple[User | None, Session | None]:
    scheme, _, credential = authorization.partition(" ")
    token = credential.strip()
    if scheme.lower() != "bearer" or not token:
        return None, None
    # A token verified moments ago needs no lookup (and no thread): see cached_token_user.
    kept = actions.cached_token_user(runtime, token)
    if kept is not None:
        return kept, None
    key = (id(asyncio.get_running_loop()), token)
    under_way = _lookups.get(key)
    if under_way is not None:
        # When a busy client's kept token lapses, its requests in flight all miss at once:
        # they wait for the one lookup under way and take its answer, instead of each asking
        # the database (and taking a connection) for the same thing.
        await asyncio.shield(under_way)
        kept = actions.cached_token_user(runtime, token)
        if kept is not None:
            return kept, None
        return await run_in_threadpool(_user_for_bearer, runtime, token)
    _lookups[key] = asyncio.get_running_loop().create_future()
    try:
        return await run_in_threadpool(_user_for_bearer, runtime, token)
    finally:
        _lookups.pop(key).set_result(None)


class AuthMiddleware:
    """Loads the user from the session cookie or bearer token and enforces CSRF.

    A request with an Authorization header (and no ?lang= to answer with a cookie) is served
    here as plain ASGI, the API's hot path: it sets no cookie, so it needs none of
    BaseHTTPMiddleware's wrapping of the response. Everything else goes through
    _SessionAuthMiddleware (cookies, CSRF with form bodies, the language cookie).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.others = _SessionAuthMiddleware(app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.others(scope, receive, send)
            return
        request = Request(scope, receive)
        authorization = request.headers.get("authorization")
        if not authorization or request.url.path.startswith(SKIP_PREFIXES) \
                or request.query_params.get("lang"):
            await self.others(scope, receive, send)
            return
        runtime, _ = _start(request)
        user, db_session = await _bearer_user(request, runtime, authorization)
        if user is None:
            await _unauthenticated(request)(scope, receive, send)
            return
        request.state.user = user
        request.state.auth_method = "token"
        setattr(request.state, REQUEST_SESSION_ATTR, db_session)
        try:
            await self.app(scope, receive, send)
        finally:
            # The route's session dependency takes it over and closes it; a route that
            # wanted no session leaves it here to close.
            await release_request_session(request)


class _SessionAuthMiddleware(BaseHTTPMiddleware):
    """AuthMiddleware for requests that may need a cookie set or deleted on the way out."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        path = request.url.path
        if path.startswith(SKIP_PREFIXES):
            return await call_next(request)
        runtime, explicit_language = _start(request)
        state = request.state
        stale_cookie = False

        authorization = request.headers.get("authorization")
        if authorization:
            user, db_session = await _bearer_user(request, runtime, authorization)
            if user is None:
                return _unauthenticated(request)
            state.user = user
            state.auth_method = "token"
            setattr(state, REQUEST_SESSION_ATTR, db_session)
            try:
                return await self._respond(request, call_next, False, explicit_language)
            finally:
                await release_request_session(request)
        else:
            cookie = request.cookies.get(SESSION_COOKIE)
            if cookie:
                loaded = await run_in_threadpool(_session_for_cookie, runtime, cookie)
                if loaded is None:
                    stale_cookie = True
                else:
                    login_session, user = loaded
                    state.login_session = login_session
                    state.csrf_token = login_session.csrf_token
                    if user is not None and login_session.totp_pending:
                        state.pending_user = user
                    elif user is not None:
                        state.user = user
                        state.auth_method = "session"
            if request.method in UNSAFE_METHODS and not is_csrf_exempt(path):
                refusal = await self._refuse_unsafe(request)
                if refusal is not None:
                    if stale_cookie:
                        refusal.delete_cookie(SESSION_COOKIE, path="/")
                    return refusal

        return await self._respond(request, call_next, stale_cookie, explicit_language)

    @staticmethod
    async def _respond(request: Request, call_next: RequestResponseEndpoint, stale_cookie: bool,
                       explicit_language: str | None) -> Response:
        response = await call_next(request)
        if stale_cookie and not _sets_session_cookie(response):
            response.delete_cookie(SESSION_COOKIE, path="/")
        if explicit_language and explicit_language in LANGUAGES:
            response.set_cookie(LANGUAGE_COOKIE, explicit_language, max_age=LANGUAGE_COOKIE_MAX_AGE,
                                samesite="lax", path="/")
        return response

    @staticmethod
    async def _refuse_unsafe(request: Request) -> Response | None:
        login_session = request.state.login_session
        if login_session is None and request.url.path.startswith("/api/"):
            # No credential at all: an API client needs to hear "sign in", not "CSRF".
            return _error(request, 401, "not_authenticated", "error.not_authenticated")
        if not _csrf_matches(await _submitted_csrf(request), login_session):
            return _error(request, 403, "csrf_failed", "error.csrf")
        return None


# --- pages -----------------------------------------------------------------------------------

router = APIRouter()


def set_session_cookie(response: Response, runtime: Runtime, value: str) -> None:
    response.set_cookie(SESSION_COOKIE, value, httponly=True, samesite="lax", path="/",
                        secure=runtime.settings.environment == Environment.PRODUCTION)


def safe_next(target: str | None, user: User | None = None) -> str:
    """Only same-site paths: an open redirect after login is a phishing gift."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return home_path(user)


def _render(request: Request, template: str, status_code: int = 200, **values: Any) -> Response:
    from grassroots.web.templating import page_context

    templates = request.app.state.templates
    response: Response = templates.TemplateResponse(
        request, template, page_context(request, **values), status_code=status_code)
    return response


def _redirect(target: str) -> RedirectResponse:
    return RedirectResponse(target, status_code=303)


def _with_next(path: str, target: str | None) -> str:
    from urllib.parse import quote

    return f"{path}?next={quote(target)}" if target else path


@router.get("/", include_in_schema=False)
def home(request: Request) -> RedirectResponse:
    return _redirect(home_path(request.state.user) if request.state.user else LOGIN_PATH)


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login_page(request: Request, session: SessionDep, runtime: RuntimeDep, ip: ClientIp,
               language: LanguageDep, next: str | None = None) -> Response:
    if request.state.user is not None:
        return _redirect(safe_next(next, request.state.user))
    cookie_value = None
    if request.state.login_session is None:
        login_session, cookie_value = actions.start_session(
            session=session, runtime=runtime, user=None, language=language, source_ip=ip)
        request.state.login_session = login_session
        request.state.csrf_token = login_session.csrf_token
    response = _render(request, "auth/login.html", next=next or "", username="", error=None)
    if cookie_value:
        set_session_cookie(response, runtime, cookie_value)
    return response


@router.post("/login", include_in_schema=False)
def login_submit(
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    ip: ClientIp,
    language: LanguageDep,
    username: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "",
) -> Response:
    try:
        user = actions.authenticate(session=session, runtime=runtime, username=username,
                                    password=password, source_ip=ip)
    except NotAuthenticated as exc:
        return _render(request, "auth/login.html", status_code=401, next=next,
                       username=username, error=exc.message(language))
    pending = queries.totp_required(runtime=runtime, user=user)
    _login_session, cookie_value = actions.start_session(
        session=session, runtime=runtime, user=user,
        previous_token=request.cookies.get(SESSION_COOKIE), totp_pending=pending,
        language=language, source_ip=ip)
    if not pending:
        target = safe_next(next, user)
    elif user.totp_enabled:
        target = _with_next("/login/totp", next)
    else:
        target = _with_next("/account/totp", next)  # an admin who must enrol before going on
    response = _redirect(target)
    set_session_cookie(response, runtime, cookie_value)
    return response


@router.get("/login/totp", response_class=HTMLResponse, include_in_schema=False)
def login_totp_page(request: Request, next: str | None = None) -> Response:
    if request.state.user is not None:
        return _redirect(safe_next(next, request.state.user))
    pending = request.state.pending_user
    if pending is None or not pending.totp_enabled:
        return _redirect(LOGIN_PATH)
    return _render(request, "auth/login_totp.html", next=next or "", error=None)


@router.post("/login/totp", include_in_schema=False)
def login_totp_submit(
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    ip: ClientIp,
    language: LanguageDep,
    code: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "",
) -> Response:
    pending = request.state.pending_user
    if pending is None:
        return _redirect(LOGIN_PATH)
    if not actions.verify_totp(session=session, runtime=runtime, user=pending, code=code,
                               source_ip=ip):
        return _render(request, "auth/login_totp.html", status_code=401, next=next,
                       error=translate("auth.totp.invalid_code", language))
    return _finish_login(request, session, runtime, pending, next, language, ip)


def _finish_login(request: Request, session: SessionDep, runtime: Runtime, user: User,
                  next: str | None, language: str, ip: str | None) -> Response:
    """The second factor is done: rotate the session once more, now fully signed in."""
    _login_session, cookie_value = actions.start_session(
        session=session, runtime=runtime, user=user,
        previous_token=request.cookies.get(SESSION_COOKIE), language=language, source_ip=ip)
    response = _redirect(safe_next(next, user))
    set_session_cookie(response, runtime, cookie_value)
    return response


@router.post("/logout", include_in_schema=False)
def logout(request: Request, session: SessionDep, runtime: RuntimeDep, ip: ClientIp) -> Response:
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and request.state.login_session is not None:
        actions.end_session(session=session, runtime=runtime, token=cookie, source_ip=ip)
    response = _redirect(LOGIN_PATH)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _account_user(request: Request) -> User | None:
    user = request.state.user or request.state.pending_user
    return user if isinstance(user, User) else None


@router.get("/account/totp", response_class=HTMLResponse, include_in_schema=False)
def totp_page(request: Request, runtime: RuntimeDep, next: str | None = None) -> Response:
    user = _account_user(request)
    if user is None:
        return _redirect(_with_next(LOGIN_PATH, "/account/totp"))
    enrolment = queries.pending_totp_enrolment(runtime=runtime, user=user)
    return _render(request, "auth/totp.html", account=user, enrolment=enrolment,
                   must_enrol=request.state.pending_user is not None, next=next or "",
                   error=None)


@router.post("/account/totp/begin", include_in_schema=False)
def totp_begin(request: Request, session: SessionDep, runtime: RuntimeDep, ip: ClientIp,
               language: LanguageDep, next: Annotated[str, Form()] = "") -> Response:
    user = _account_user(request)
    if user is None:
        return _redirect(LOGIN_PATH)
    try:
        actions.begin_totp_enrolment(session=session, runtime=runtime, user=user, source_ip=ip)
    except Conflict as exc:
        return _render(request, "auth/totp.html", status_code=409, account=user,
                       enrolment=None, must_enrol=False, next=next,
                       error=exc.message(language))
    return _redirect(_with_next("/account/totp", next))


@router.post("/account/totp", include_in_schema=False)
def totp_confirm(
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    ip: ClientIp,
    language: LanguageDep,
    code: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "",
) -> Response:
    user = _account_user(request)
    if user is None:
        return _redirect(LOGIN_PATH)
    try:
        confirmed = actions.confirm_totp(session=session, runtime=runtime, user=user, code=code,
                                         source_ip=ip)
    except (ValidationFailed, Conflict) as exc:
        return _render(request, "auth/totp.html", status_code=422, account=user,
                       enrolment=queries.pending_totp_enrolment(runtime=runtime, user=user),
                       must_enrol=request.state.pending_user is not None, next=next,
                       error=exc.message(language))
    if request.state.pending_user is not None:
        return _finish_login(request, session, runtime, confirmed, next, language, ip)
    return _render(request, "auth/totp.html", account=confirmed, enrolment=None,
                   must_enrol=False, next=next, error=None)


# --- JSON API --------------------------------------------------------------------------------


class TokenCreate(BaseModel):
    name: str = Field(min_length=1, max_length=120)
    user_id: int | None = None


class TokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    prefix: str
    user_id: int
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="The bearer token; shown only in this response.")


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    display_name: str
    role: str
    scope_region_id: int | None
    is_active: bool
    totp_enabled: bool


class MeOut(UserOut):
    permissions: list[str]


@router.post("/api/v1/auth/tokens", status_code=201, response_model=TokenCreated,
             tags=["auth"])
def create_token(body: TokenCreate, user: CurrentUser, session: SessionDep,
                 runtime: RuntimeDep, ip: ClientIp) -> TokenCreated:
    token, plaintext = actions.create_api_token(session=session, runtime=runtime, actor=user,
                                                name=body.name, user_id=body.user_id,
                                                source_ip=ip)
    return TokenCreated(**TokenOut.model_validate(token).model_dump(), token=plaintext)


@router.get("/api/v1/auth/tokens", response_model=list[TokenOut], tags=["auth"])
def list_tokens(user: CurrentUser, session: SessionDep) -> list[TokenOut]:
    tokens = queries.list_api_tokens(session=session, user_id=user.id)
    return [TokenOut.model_validate(token) for token in tokens]


@router.delete("/api/v1/auth/tokens/{token_id}", status_code=204, tags=["auth"])
def revoke_token(token_id: int, user: CurrentUser, session: SessionDep, runtime: RuntimeDep,
                 ip: ClientIp) -> Response:
    actions.revoke_api_token(session=session, runtime=runtime, actor=user, token_id=token_id,
                             source_ip=ip)
    return Response(status_code=204)


@router.get("/api/v1/users/me", response_model=MeOut, tags=["users"])
def me(user: CurrentUser) -> MeOut:
    permissions = sorted(p.value for p in ROLE_PERMISSIONS[user.role])
    return MeOut(**UserOut.model_validate(user).model_dump(), permissions=permissions)


UserAdmin = Annotated[User, Depends(require_any_permission(Permission.USERS_MANAGE,
                                                           Permission.ROLES_ASSIGN))]


@router.get("/api/v1/users", response_model=list[UserOut], tags=["users"])
def users(user: UserAdmin, session: SessionDep,
          limit: Annotated[int, Query(ge=1, le=queries.LIST_LIMIT_MAX)] = 100,
          offset: Annotated[int, Query(ge=0)] = 0) -> list[UserOut]:
    rows = queries.list_users(session=session, viewer=user, limit=limit, offset=offset)
    return [UserOut.model_validate(row) for row in rows]


async def _sign_in_first(request: Request, exc: Exception) -> Response:
    """A signed-out person opening a page goes to the login form and comes back after."""
    language = getattr(request.state, "language", None) or "zh_CN"
    if wants_json(request) or request.method not in ("GET", "HEAD"):
        assert isinstance(exc, NotAuthenticated)
        return error_response(request, exc.status_code, exc.code, exc.message(language))
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return _redirect(_with_next(LOGIN_PATH, target))


def install_auth(app: FastAPI) -> None:
    """Add the middleware and the routes once; safe to call again (tests and app.py both may)."""
    if getattr(app.state, "auth_installed", False):
        return
    app.add_middleware(AuthMiddleware)
    app.add_exception_handler(NotAuthenticated, _sign_in_first)
    app.include_router(router)
    app.state.auth_installed = True
