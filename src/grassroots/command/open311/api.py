"""The GeoReport v2 endpoints under /open311/v2/ and the key administration API.

Every GeoReport route answers failures in the spec's form (a list of {code, description}, in
the format the path asks for) through Open311Route, whatever was raised. Paths that match no
route at all (a 404 or 405 under /open311/) reach the app's handlers instead:
`install_open311_error_handling(app)` makes those answer the spec's way too.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Coroutine
from datetime import datetime
from json import JSONDecodeError
from typing import Annotated, Any, cast
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from grassroots.command.open311 import (
    DEFAULT_WINDOW,
    JURISDICTION_ID,
    MAX_RESULTS,
    MAX_WINDOW,
    PREFIX,
    keys,
    queries,
)
from grassroots.command.open311.formats import (
    HTTP_DESCRIPTIONS,
    Open311Error,
    created_document,
    definition_document,
    discovery_document,
    error_response,
    format_of_path,
    parse_w3c,
    render,
    request_document,
    service_document,
    split_format,
    token_document,
    update_document,
)
from grassroots.command.open311.intake import (
    Fields,
    check_fields,
    collect_fields,
    submit_request,
)
from grassroots.command.open311.schemas import ClientCreate, ClientCreated, ClientOut
from grassroots.command.request_deps import ClientIp, RuntimeDep, SessionDep, require_any
from grassroots.command.states import OPEN_STATES, TERMINAL_STATES, IncidentState
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Permission
from grassroots.kernel.errors import GrassrootsError
from grassroots.kernel.i18n import negotiate
from grassroots.runtime import Runtime
from grassroots.settings import Environment

log = logging.getLogger(__name__)

ROOT = "/open311/"  # discovery also answers here; every path below gets the spec's errors
IDEMPOTENCY_HEADER = "idempotency-key"
MAX_PAGE = 100_000
STATUS_STATES: dict[str, frozenset[IncidentState]] = {"open": OPEN_STATES,
                                                      "closed": TERMINAL_STATES}


class Open311Route(APIRoute):
    """A route whose every failure is rendered as the spec's error list."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def spec_errors(request: Request) -> Response:
            fmt = format_of_path(request.url.path)
            try:
                return await handler(request)
            except Open311Error as exc:
                return error_response(exc.status, exc.descriptions, fmt)
            except GrassrootsError as exc:
                # The core's 422 is the spec's 400; the message is in the asker's language.
                status = 400 if exc.status_code == 422 else exc.status_code
                return error_response(status, [exc.message(_language(request))], fmt)
            except RequestValidationError as exc:
                problems = [str(err.get("msg", "")) for err in exc.errors()] or ["Bad request"]
                return error_response(400, problems, fmt)
            except StarletteHTTPException as exc:
                return error_response(exc.status_code, [HTTP_DESCRIPTIONS.get(
                    exc.status_code, str(exc.detail))], fmt)
            except Exception:
                log.exception("open311: unhandled error on %s %s", request.method,
                              request.url.path)
                return error_response(500, [HTTP_DESCRIPTIONS[500]], fmt)

        return spec_errors


georeport = APIRouter(route_class=Open311Route, tags=["open311"])
admin = APIRouter(prefix="/api/v1/open311", tags=["open311"])
router = APIRouter()


# --- plumbing ------------------------------------------------------------------------------------


def _language(request: Request) -> str:
    cached = getattr(request.state, "language", None)
    if cached:
        return str(cached)
    return negotiate(request.headers.get("accept-language"), request.query_params.get("lang"))


def _fmt(fmt: str) -> str:
    return split_format(f"x.{fmt}")[1]


def _jurisdiction(value: str | None) -> None:
    if value and value.strip() and value.strip() != JURISDICTION_ID:
        raise Open311Error(404, f"jurisdiction_id {value.strip()} was not found")


def _viewer(session: SessionDep, request: Request) -> str | None:
    """Who asks: the client whose api_key came with the query, or None for the public."""
    key = request.query_params.get("api_key")
    if not key:
        return None
    client = keys.client_for_key(session=session, key=key)
    if client is None:
        raise Open311Error(403, "api_key is not valid")
    return keys.client_ref(client)


def _list_param(request: Request, name: str) -> list[str] | None:
    raw = request.query_params.get(name)
    if raw is None or not raw.strip():
        return None
    return [part.strip() for part in raw.split(",") if part.strip()]


def _window(request: Request, now: datetime) -> tuple[datetime, datetime]:
    """[start, end] of requested_datetime: the last 90 days by default, at most 90 days."""
    start_text, end_text = request.query_params.get("start_date"), request.query_params.get(
        "end_date")
    start = parse_w3c(start_text, "start_date") if start_text else None
    end = parse_w3c(end_text, "end_date") if end_text else None
    if start is None and end is None:
        return now - DEFAULT_WINDOW, now
    if start is None:
        assert end is not None
        return end - DEFAULT_WINDOW, end
    if end is None:
        return start, start + DEFAULT_WINDOW
    if end < start:
        raise Open311Error(400, "end_date is before start_date")
    if end - start > MAX_WINDOW:
        raise Open311Error(400, f"start_date to end_date may not span more than "
                                f"{MAX_WINDOW.days} days")
    return start, end


def _page(request: Request) -> tuple[int, int]:
    """(limit, offset) from the common page/page_size extension; 1000 rows by default."""
    try:
        page = int(request.query_params.get("page") or 1)
        size = int(request.query_params.get("page_size") or MAX_RESULTS)
    except ValueError:
        raise Open311Error(400, "page and page_size must be whole numbers") from None
    if not 1 <= page <= MAX_PAGE or not 1 <= size <= MAX_RESULTS:
        raise Open311Error(400, f"page must be 1 to {MAX_PAGE} and page_size 1 to {MAX_RESULTS}")
    return size, (page - 1) * size


def _states(request: Request) -> frozenset[IncidentState] | None:
    listed = _list_param(request, "status")
    if listed is None:
        return None
    statuses = [status.lower() for status in listed]
    unknown = sorted(set(statuses) - set(STATUS_STATES))
    if unknown:
        raise Open311Error(400, f"status must be open or closed, not {', '.join(unknown)}")
    return frozenset().union(*(STATUS_STATES[s] for s in statuses))


Viewer = Annotated[str | None, Depends(_viewer)]


# --- GeoReport v2 ----------------------------------------------------------------------------


@georeport.get(ROOT + "discovery.{fmt}")
@georeport.get(PREFIX + "/discovery.{fmt}")
def discovery(fmt: str, request: Request, session: SessionDep, runtime: RuntimeDep) -> Response:
    fmt = _fmt(fmt)
    document = discovery_document(
        url=str(request.base_url) + PREFIX.lstrip("/") + "/",
        changeset=queries.catalogue_changed_at(session=session),
        production=runtime.settings.environment == Environment.PRODUCTION)
    return render(document, fmt, "discovery")


@georeport.get(PREFIX + "/services.{fmt}")
def services(fmt: str, request: Request, session: SessionDep) -> Response:
    fmt = _fmt(fmt)
    _jurisdiction(request.query_params.get("jurisdiction_id"))
    language = _language(request)
    documents = [service_document(category, language)
                 for category in queries.list_services(session=session)]
    return render(documents, fmt, "services")


@georeport.get(PREFIX + "/services/{name}")
def service_definition(name: str, request: Request, session: SessionDep) -> Response:
    code, fmt = split_format(name)
    _jurisdiction(request.query_params.get("jurisdiction_id"))
    category = queries.get_service(session=session, code=code)
    if category is None:
        raise Open311Error(404, f"service_code {code} was not found")
    return render(definition_document(category, _language(request)), fmt, "service_definition")


@georeport.get(PREFIX + "/requests.{fmt}")
def list_requests(fmt: str, request: Request, session: SessionDep, runtime: RuntimeDep,
                  viewer: Viewer) -> Response:
    fmt = _fmt(fmt)
    _jurisdiction(request.query_params.get("jurisdiction_id"))
    limit, offset = _page(request)
    numbers = _list_param(request, "service_request_id")
    if numbers is not None:  # the spec: this overrides every other filter
        rows = queries.find_requests(session=session, viewer=viewer, numbers=numbers,
                                     limit=limit, offset=offset)
    else:
        start, end = _window(request, runtime.clock.now())
        rows = queries.find_requests(session=session, viewer=viewer,
                                     service_codes=_list_param(request, "service_code"),
                                     start=start, end=end, states=_states(request),
                                     limit=limit, offset=offset)
    language = _language(request)
    return render([request_document(row, language) for row in rows], fmt, "service_requests")


@georeport.get(PREFIX + "/requests/{name}")
def get_request(name: str, request: Request, session: SessionDep, viewer: Viewer) -> Response:
    number, fmt = split_format(name)
    _jurisdiction(request.query_params.get("jurisdiction_id"))
    row = queries.find_by_number(session=session, viewer=viewer, number=number)
    if row is None:
        raise Open311Error(404, f"service_request_id {number} was not found")
    return render([request_document(row, _language(request))], fmt, "service_requests")


@georeport.get(PREFIX + "/tokens/{name}")
def get_token(name: str, request: Request, session: SessionDep, viewer: Viewer) -> Response:
    """Requests are made synchronously and no token is handed out; a client that polls anyway
    with the service_request_id as its token gets that id back."""
    token, fmt = split_format(name)
    _jurisdiction(request.query_params.get("jurisdiction_id"))
    row = queries.find_by_number(session=session, viewer=viewer, number=token)
    if row is None:
        raise Open311Error(404, f"token {token} was not found")
    return render(token_document(row.incident.number, token), fmt, "service_requests")


@georeport.get(PREFIX + "/request_updates.{fmt}")
@georeport.get(PREFIX + "/servicerequestupdates.{fmt}")  # mySociety's name for the extension
def request_updates(fmt: str, request: Request, session: SessionDep, runtime: RuntimeDep,
                    viewer: Viewer) -> Response:
    fmt = _fmt(fmt)
    _jurisdiction(request.query_params.get("jurisdiction_id"))
    limit, offset = _page(request)
    start, end = _window(request, runtime.clock.now())
    rows = queries.find_updates(session=session, viewer=viewer, start=start, end=end,
                                numbers=_list_param(request, "service_request_id"),
                                limit=limit, offset=offset)
    language = _language(request)
    return render([update_document(row, language) for row in rows], fmt,
                  "service_request_updates")


async def _submitted_fields(request: Request) -> Fields:
    """The POST's fields: the query string first (some clients put api_key there), then the body."""
    items: list[tuple[str, Any]] = list(request.query_params.multi_items())
    attributes = None
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = await request.json()
        except (JSONDecodeError, UnicodeDecodeError):
            raise Open311Error(400, "The body is not valid JSON") from None
        if not isinstance(body, dict):
            raise Open311Error(400, "The JSON body must be an object of the request's fields")
        attributes = body.pop("attribute", None)
        if attributes is not None and not isinstance(attributes, dict):
            raise Open311Error(400, "attribute must be an object of code: value")
        items += list(body.items())
    elif request.headers.get("content-type", "").startswith("multipart/"):
        items += list((await request.form()).multi_items())
    else:
        items += _urlencoded_items(await request.body())
    return collect_fields(items, attributes)


def _urlencoded_items(raw: bytes) -> list[tuple[str, Any]]:
    """Decode a form body as UTF-8 ourselves.

    Starlette reads urlencoded bytes as latin-1, which garbles Chinese sent unescaped, as
    `curl -d 'description=垃圾桶满溢'` and many simple clients do; escaped bodies decode the same.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Open311Error(400, "The request body must be UTF-8") from None
    return list(parse_qsl(text, keep_blank_values=True))


def _create(runtime: Runtime, fields: Fields, idempotency_key: str | None, source_ip: str | None,
            language: str, fmt: str) -> Response:
    api_key = fields.one("api_key")
    _jurisdiction(fields.one("jurisdiction_id"))
    with runtime.session_factory() as session:
        client = keys.client_for_key(session=session, key=api_key or "")
        if client is None:
            raise Open311Error(403, "api_key was not provided" if not api_key
                               else "api_key is not valid")
        data = check_fields(fields)
        submitted = submit_request(session=session, runtime=runtime, client=client, data=data,
                                   idempotency_key=idempotency_key, source_ip=source_ip)
        document = created_document(submitted.incident, submitted.category, data.account_id,
                                    language)
    return render(document, fmt, "service_requests")


@georeport.post(PREFIX + "/requests.{fmt}")
async def create_request(fmt: str, request: Request, runtime: RuntimeDep,
                         ip: ClientIp) -> Response:
    """POST a service request (form-encoded as the spec says, or JSON); api_key is required.

    An `Idempotency-Key` header makes a retry return the first request instead of a second.
    """
    fmt = _fmt(fmt)
    fields = await _submitted_fields(request)
    key = (request.headers.get(IDEMPOTENCY_HEADER) or "").strip() or None
    return await run_in_threadpool(_create, runtime, fields, key, ip, _language(request), fmt)


# --- key administration (security administrators) ----------------------------------------------

KeyAdmin = Annotated[User, Depends(require_any(Permission.API_TOKENS_MANAGE))]


@admin.post("/clients", status_code=201, response_model=ClientCreated)
def create_client(body: ClientCreate, user: KeyAdmin, session: SessionDep, runtime: RuntimeDep,
                  ip: ClientIp) -> ClientCreated:
    client, api_key = keys.issue_open311_key(session=session, runtime=runtime, actor=user,
                                             client_name=body.name, source_ip=ip)
    return ClientCreated(**ClientOut.model_validate(client).model_dump(), api_key=api_key)


@admin.get("/clients", response_model=list[ClientOut])
def list_clients(user: KeyAdmin, session: SessionDep) -> list[ClientOut]:
    return [ClientOut.model_validate(c) for c in keys.list_clients(session=session)]


@admin.delete("/clients/{client_id}", status_code=204)
def revoke_client(client_id: int, user: KeyAdmin, session: SessionDep, runtime: RuntimeDep,
                  ip: ClientIp) -> Response:
    keys.revoke_open311_key(session=session, runtime=runtime, actor=user, client_id=client_id,
                            source_ip=ip)
    return Response(status_code=204)


router.include_router(georeport)
router.include_router(admin)


# --- errors outside any route --------------------------------------------------------------------


def install_open311_error_handling(app: FastAPI) -> None:
    """Answer a 404 or 405 under /open311/ with the spec's error list; other paths as before.

    Call it in create_app, after install_error_handlers and before the first request (Starlette
    reads the handlers when it builds the middleware stack). Safe to call twice.
    """
    if getattr(app.state, "open311_errors_installed", False):
        return
    previous = app.exception_handlers.get(StarletteHTTPException)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if request.url.path.startswith(ROOT):
            response = error_response(exc.status_code, [HTTP_DESCRIPTIONS.get(
                exc.status_code, str(exc.detail))], format_of_path(request.url.path))
            if exc.headers:
                response.headers.update(exc.headers)
            return response
        if previous is None:
            return await http_exception_handler(request, exc)
        result = previous(request, exc)
        return cast(Response, await result if inspect.isawaitable(result) else result)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.state.open311_errors_installed = True
