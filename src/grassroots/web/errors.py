"""Errors as a JSON body {"error": {"code", "message"}} for the API and as HTML pages for people."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from grassroots.kernel.errors import GrassrootsError
from grassroots.kernel.i18n import negotiate, translate

log = logging.getLogger(__name__)

_HTTP_MESSAGES = {
    401: ("not_authenticated", "error.not_authenticated"),
    403: ("permission_denied", "error.permission_denied"),
    404: ("not_found", "error.page_not_found"),
    405: ("method_not_allowed", "error.method_not_allowed"),
}


def _language(request: Request) -> str:
    cached = getattr(request.state, "language", None)
    if cached:
        return str(cached)
    return negotiate(request.headers.get("accept-language"),
                     request.query_params.get("lang") or request.cookies.get("lang"))


def wants_json(request: Request) -> bool:
    path = request.url.path
    if path.startswith(("/api/", "/open311/")) or path == "/healthz":
        return True
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def error_response(request: Request, status: int, code: str, message: str,
                   details: list[dict[str, str]] | None = None) -> Response:
    if wants_json(request):
        body: dict[str, object] = {"error": {"code": code, "message": message}}
        if details:
            body["error"]["details"] = details  # type: ignore[index]
        return JSONResponse(body, status_code=status)
    templates = request.app.state.templates
    from grassroots.web.templating import page_context

    return templates.TemplateResponse(
        request, "error.html",
        page_context(request, status=status, code=code, message=message),
        status_code=status,
    )


def _validation_details(exc: RequestValidationError) -> list[dict[str, str]]:
    details = []
    for err in exc.errors():
        field = ".".join(str(part) for part in err.get("loc", ()) if part not in ("body", "query"))
        details.append({"field": field, "problem": str(err.get("msg", ""))})
    return details


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GrassrootsError)
    async def _domain_error(request: Request, exc: GrassrootsError) -> Response:
        return error_response(request, exc.status_code, exc.code, exc.message(_language(request)))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        details = _validation_details(exc)
        summary = "; ".join(f"{d['field']}: {d['problem']}" for d in details)
        message = translate("error.validation_failed", _language(request), detail=summary)
        return error_response(request, 422, "validation_failed", message, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code, message_id = _HTTP_MESSAGES.get(exc.status_code, ("bad_request", "error.bad_request"))
        response = error_response(request, exc.status_code, code,
                                  translate(message_id, _language(request)))
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request, 500, "internal", translate("error.internal",
                                                                  _language(request)))
