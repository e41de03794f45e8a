"""The incident report's hot path: POST /api/v1/incidents taken before the router.

Why: at the intake target (500 reports/s on this two-core machine, command.intake_writer) the
framework around the report route — matching the request against every route, solving its
eight dependencies, wrapping request and response — cost about as much CPU per report as the
route's own work, on the same cores the intake writer and the database need. This ASGI
middleware sits just inside the auth middleware and takes the usual report itself: a user
signed in with an API token whose role may report, a JSON body that IncidentIn accepts, and a
report the intake creates. It uses the route's own helpers (report_entry, created_answer,
answer_from_database), so the report is taken and answered exactly as the route would.

Everything else — another path or method, a session cookie, a query string, a body the
model refuses, a missing permission, a 110 hand-over, a retry of a key already on file, a
report the intake refuses — goes on to the route untouched, with the body it read replayed:
errors and the rare cases keep one implementation. Nothing is written before such a hand-over
(a refused or retried report writes nothing), so the route taking it afresh is safe. Any other
error is raised, as from the route, and never retried here.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import cast

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from grassroots.command import actions
from grassroots.command.api import (
    IDEMPOTENCY_KEY_MAX,
    answer_from_database,
    created_answer,
    report_entry,
)
from grassroots.command.intake_writer import IntakeWriter
from grassroots.command.schemas import IncidentIn
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Permission, has_permission
from grassroots.kernel.errors import GrassrootsError
from grassroots.plumbing import language_of, release_request_session
from grassroots.runtime import Runtime

INTAKE_PATH = "/api/v1/incidents"
_JSON_HEADERS = [(b"content-type", b"application/json")]


class IntakeFastPath:
    """Serves the usual POST /api/v1/incidents; hands everything else on (module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _may_take(scope):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        runtime: Runtime = request.app.state.runtime
        received_at = runtime.clock.now()  # as the route does: the wait for the batch counts
        body = await request.body()
        answer = await _take(request, runtime, body, received_at)
        if answer is None:
            await self.app(scope, _replaying(body, receive), send)
            return
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"content-length", str(len(answer)).encode()),
                                *_JSON_HEADERS]})
        await send({"type": "http.response.body", "body": answer})


def _may_take(scope: Scope) -> bool:
    """A POST of a report by a token user (the auth middleware's plain-ASGI branch ran)."""
    if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != INTAKE_PATH \
            or scope.get("query_string"):
        return False
    state = scope.get("state") or {}
    return state.get("auth_method") == "token" and state.get("user") is not None


async def _take(request: Request, runtime: Runtime, body: bytes,
                received_at: datetime) -> bytes | None:
    """The 201 answer for a report taken here, or None to hand the request to the route."""
    user = cast(User, request.state.user)
    if not has_permission(user.role, Permission.INCIDENTS_REPORT):
        return None
    report = _report(request, body)
    key = request.headers.get("idempotency-key")
    if report is None or (key is not None and len(key) > IDEMPOTENCY_KEY_MAX):
        return None
    entry = report_entry(report, user, request.client.host if request.client else None, key)
    try:
        call = actions.entry_call(**entry, received_at=received_at)
    except GrassrootsError:
        return None
    if call is None:  # a 110 hand-over: the route's own path
        return None
    await release_request_session(request)
    writer = cast(IntakeWriter, request.app.state.intake_writer)
    try:
        result = await writer.submit_async(call)
    except GrassrootsError:  # refused, so nothing written: the route takes it again and answers
        return None
    # Anything else (the database gone, the app shutting down) is raised as the route would:
    # it may have come after a COMMIT, and taking the report again could write it twice.
    if not result.created:  # a retry: the route answers it with 200
        return None
    language = language_of(request)
    answer = created_answer(runtime, language, result)
    if answer is not None:
        return answer
    created = await run_in_threadpool(answer_from_database, runtime, language, user, result)
    return created.model_dump_json().encode()


def _report(request: Request, body: bytes) -> IncidentIn | None:
    """The body as the route reads it (JSON, then IncidentIn), or None if it would refuse it."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        return None
    try:
        return IncidentIn.model_validate(json.loads(body))
    except (ValueError, ValidationError, RecursionError):  # the route answers each of them
        return None


def _replaying(body: bytes, receive: Receive) -> Receive:
    """receive() for the route: the body already read, then the connection's own messages."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
